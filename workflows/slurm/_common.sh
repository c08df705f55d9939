# Sourced by every cxrad batch script: run one cxrad command so that a walltime warning
# (sbatch --signal=B:USR1@120) reaches it, lets it checkpoint, and requeues the job; the requeued
# job resumes from that checkpoint because `cxrad run --stage` resumes interrupted stages.
set -euo pipefail
: "${CXRAD_CONFIG:?set CXRAD_CONFIG (submit.sh does)}"
: "${CXRAD_WORKDIR:?set CXRAD_WORKDIR (submit.sh does)}"
export CXRAD_NO_PROGRESS=1
CXRAD_BIN=${CXRAD_BIN:-cxrad}

echo "cxrad: SLURM job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array ${SLURM_ARRAY_JOB_ID:-?} task $SLURM_ARRAY_TASK_ID)} on $(hostname)"

# The walltime warning: pass it on to cxrad, which checkpoints and exits with 128 + SIGUSR1 = 138;
# then requeue. A stage that finished meanwhile ends the job normally; any other failure fails it.
_cxrad_walltime() {
    local child=$1 rc=0
    echo "walltime signal: checkpointing and requeueing"
    kill -USR1 "$child" 2>/dev/null || true
    wait "$child" || rc=$?
    case $rc in
        0) echo "the stage finished before the walltime; nothing to requeue"; exit 0 ;;
        138) scontrol requeue "${SLURM_JOB_ID}"; exit 0 ;;
        *) echo "cxrad exited with $rc after the walltime signal; not requeueing" >&2; exit "$rc" ;;
    esac
}

cxrad_stage() {
    $CXRAD_BIN run "$CXRAD_CONFIG" --workdir "$CXRAD_WORKDIR" "$@" &
    local child=$!
    # shellcheck disable=SC2064  # expand $child now
    trap "_cxrad_walltime $child" USR1
    wait "$child"
}
