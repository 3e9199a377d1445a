-- Argo CD health check for sluice.dev/v1alpha1 Canary
-- (argocd-cm key resource.customizations.health.sluice.dev_Canary).
--
--   Healthy      the Canary is Idle, or its current revision is promoted (phase Succeeded, the
--                Promoted condition True and status.stableRevision equal to status.revision)
--   Progressing  a rollout runs (Initializing, Progressing, WaitingPromotion, Promoting),
--                or the controller has not yet seen this generation
--   Suspended    a person paused the rollout (kubectl sluice pause); nothing moves until resume
--   Degraded     the current revision failed (rolled back), or the spec is invalid
--
-- Argo CD runs health scripts in Lua 5.1 with only the base and table libraries (no string or
-- math): hence plain concatenation and no string functions. Tested with Lua 5.1, same libraries.
local hs = {}
local status = obj.status or {}
local metadata = obj.metadata or {}

local function condition(kind)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function says(default)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return default
end

if status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the sluice controller to pick up this Canary"
  return hs
end

-- The same rule as kstatus (Flux): a status computed from an older spec says nothing yet.
if metadata.generation ~= nil and (status.observedGeneration or 0) < metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the sluice controller to observe generation " .. tostring(metadata.generation)
  return hs
end

local revision = status.revision or "none"
local invalid = condition("InvalidSpec")
if status.phase == "Invalid" or (invalid ~= nil and invalid.status == "True") then
  hs.status = "Degraded"
  hs.message = "Invalid spec: " .. ((invalid and invalid.message) or says("see the InvalidSpec condition"))
  return hs
end

local failed = condition("Failed")
if status.phase == "Failed" or (failed ~= nil and failed.status == "True") then
  hs.status = "Degraded"
  hs.message = "Revision " .. revision .. " failed: " .. ((failed and failed.message) or says("rolled back"))
  return hs
end

if status.phase == "Idle" then
  hs.status = "Healthy"
  hs.message = says("Idle: revision " .. revision .. " is stable")
  return hs
end

if status.phase == "Succeeded" then
  local promoted = condition("Promoted")
  if promoted ~= nil and promoted.status == "True" and status.stableRevision == status.revision then
    hs.status = "Healthy"
    hs.message = "Revision " .. revision .. " promoted"
    return hs
  end
  hs.status = "Progressing"
  hs.message = "Revision " .. revision .. " succeeded; waiting for its Promoted condition"
  return hs
end

if status.phase == "Paused" then
  hs.status = "Suspended"
  hs.message = "Paused by a person at weight " .. tostring(status.canaryWeight or 0) .. "%: " .. says("run kubectl sluice resume")
  return hs
end

if status.phase == "Initializing" or status.phase == "Progressing" or status.phase == "WaitingPromotion"
    or status.phase == "Promoting" then
  hs.status = "Progressing"
  hs.message = status.phase .. " at weight " .. tostring(status.canaryWeight or 0) .. "%: " .. says("rollout running")
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(status.phase)
return hs
