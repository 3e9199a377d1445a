#!/usr/bin/env bash
# Deploys a new image to a Deployment under sluice and gates the pipeline on sluice's verdict for
# exactly that revision: `kubectl sluice wait` binds to the template the `set image` just wrote,
# so the previous release's success cannot pass the gate.
#
# Usage: deploy-and-gate.sh DEPLOYMENT CONTAINER IMAGE [NAMESPACE]
# Environment: CANARY (the Canary's name, default DEPLOYMENT), TIMEOUT (default 15m),
#              KUBECONFIG as for kubectl. Needs kubectl and kubectl-sluice on PATH.
# Exits with `kubectl sluice wait`'s code (0 promoted, 1 measured bad by analysis, 2 progress
# deadline, 3 aborted, 4 superseded, 5 invalid spec, 6 timed out (still progressing or paused,
# also paused by `onUnknownDeadline: Pause`), 7 could not ask, 9 rolled back unmeasured: checks
# stayed Unknown until the unknown deadline); the JSON summary is printed on stdout.
set -uo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 DEPLOYMENT CONTAINER IMAGE [NAMESPACE]" >&2
  exit 64
fi
deployment=$1
container=$2
image=$3
namespace=${4:-default}
canary=${CANARY:-$deployment}
timeout=${TIMEOUT:-15m}

if ! kubectl -n "$namespace" set image "deployment/$deployment" "$container=$image" >&2; then
  echo "deploy: could not set the image of deployment/$deployment" >&2
  exit 7
fi

summary=$(kubectl sluice wait "$canary" -n "$namespace" --timeout "$timeout" -o json)
code=$?
printf '%s\n' "$summary"

case $code in
  0) echo "deploy: $image promoted; the stable Deployment serves it" >&2 ;;
  1) echo "deploy: $image rolled back by analysis: measured bad (see: kubectl sluice status $canary -n $namespace)" >&2 ;;
  2) echo "deploy: $image rolled back: its pods were not ready within the progress deadline" >&2 ;;
  3) echo "deploy: $image was aborted by a person" >&2 ;;
  4) echo "deploy: $image was superseded by a newer revision before it finished" >&2 ;;
  5) echo "deploy: the Canary's spec is invalid (kubectl describe canaries.sluice.dev $canary -n $namespace)" >&2 ;;
  6) echo "deploy: $image still rolling out (or paused) after $timeout" >&2 ;;
  7) echo "deploy: could not ask the cluster about Canary $canary" >&2 ;;
  9) echo "deploy: $image rolled back unmeasured: its checks stayed Unknown until the unknown deadline; fix the metrics, then kubectl sluice retry $canary -n $namespace" >&2 ;;
  *) echo "deploy: kubectl sluice wait exited $code" >&2 ;;
esac
exit "$code"
