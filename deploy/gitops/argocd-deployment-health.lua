-- Argo CD health check for apps/Deployment
-- (argocd-cm key resource.customizations.health.apps_Deployment), replacing Argo CD's built-in one.
--
-- A Deployment that sluice holds (labelled sluice.dev/canary and spec.paused: true) is reported
-- by what the hold means instead of Suspended:
--   Healthy      held at rest: every pod runs the current template and is available (the
--                paused-at-rest hold mode keeps every Deployment it manages paused)
--   Progressing  a new pod template is held while sluice canaries it, or pods are still rolling
-- A held template stays Progressing after sluice rolled it back: the Deployment alone cannot
-- tell "being analysed" from "failed". The Canary's own health check reports that (Degraded).
--
-- Every other Deployment gets Argo CD's built-in logic and messages, line for line (a paused one that
-- sluice does not manage is Suspended, as before).
-- Argo CD runs health scripts in Lua 5.1 with only the base and table libraries (no string or
-- math): hence plain concatenation and no string functions. Tested with Lua 5.1, same libraries.
local hs = {}
local metadata = obj.metadata or {}
local spec = obj.spec or {}
local status = obj.status or {}
local labels = metadata.labels or {}
local canary = labels["sluice.dev/canary"]
local held = spec.paused == true and canary ~= nil

if spec.paused == true and not held then
  hs.status = "Suspended"
  hs.message = "Deployment is paused"
  return hs
end

if (metadata.generation or 0) > (status.observedGeneration or 0) then
  hs.status = "Progressing"
  hs.message = "Waiting for rollout to finish: observed deployment generation less then desired generation"
  return hs
end

for _, c in ipairs(status.conditions or {}) do
  if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded" then
    hs.status = "Degraded"
    hs.message = "Deployment \"" .. tostring(metadata.name) .. "\" exceeded its progress deadline"
    return hs
  end
end

local updated = status.updatedReplicas or 0
local total = status.replicas or 0
local available = status.availableReplicas or 0

if spec.replicas ~= nil and updated < spec.replicas then
  hs.status = "Progressing"
  if held then
    hs.message = "sluice holds a new pod template for Canary " .. canary .. " (" .. tostring(updated) .. " of "
      .. tostring(spec.replicas) .. " pods run it); the Canary's health says whether it is analysed, waiting or failed"
  else
    hs.message = "Waiting for rollout to finish: " .. tostring(updated) .. " out of " .. tostring(spec.replicas)
      .. " new replicas have been updated..."
  end
  return hs
end

if total > updated then
  hs.status = "Progressing"
  hs.message = "Waiting for rollout to finish: " .. tostring(total - updated) .. " old replicas are pending termination..."
  return hs
end

if available < updated then
  hs.status = "Progressing"
  hs.message = "Waiting for rollout to finish: " .. tostring(available) .. " of " .. tostring(updated)
    .. " updated replicas are available..."
  return hs
end

hs.status = "Healthy"
if held then
  hs.message = "Held at rest by sluice for Canary " .. canary .. ": all " .. tostring(updated)
    .. " pods run the current template and are available"
end
return hs
