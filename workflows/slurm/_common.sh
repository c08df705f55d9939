# Sourced by every cxrad batch script: run one cxrad command so that a walltime warning
# (sbatch --signal=B:USR1@120) reaches it, lets it checkpoint, and requeues the job; the requeued
# job resumes from that checkpoint because `cxrad run --stage` resumes interrupted stages.
set -euo pipefail
: "${CXRAD_CONFIG:?set CXRAD_CONFIG (submit.sh does)}"
: "${CXRAD_WORKDIR:?set CXRAD_WORKDIR (submit.sh does)}"
export CXRAD_NO_PROGRESS=1
CXRAD_BIN=${CXRAD_BIN:-cxrad}

cxrad_stage() {
    $CXRAD_BIN run "$CXRAD_CONFIG" --workdir "$CXRAD_WORKDIR" "$@" &
    local child=$!
    trap 'echo "walltime signal: checkpointing and requeueing"; kill -USR1 "$child" 2>/dev/null; wait "$child"; scontrol requeue "${SLURM_JOB_ID}"; exit 0' USR1
    wait "$child"
}
