#!/usr/bin/env bash
# Submit the whole cxrad pipeline for CONFIG as a chain of SLURM jobs:
#   prepare -> train-ensemble (array of 2K tasks; K with one module) -> refine -> evaluate, each
#   afterok the previous.
# Usage: workflows/slurm/submit.sh CONFIG.toml [WORKDIR]
# WORKDIR defaults to $CXRAD_HOME, else ./cxrad-work. Extra sbatch options (account, partition)
# go in $CXRAD_SBATCH_ARGS, e.g. CXRAD_SBATCH_ARGS="--account=abc --partition=gpu".
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 CONFIG.toml [WORKDIR]" >&2; exit 2; fi
here=$(cd "$(dirname "$0")" && pwd)
config=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
workdir=${2:-${CXRAD_HOME:-$PWD/cxrad-work}}
mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd)
CXRAD_BIN=${CXRAD_BIN:-cxrad}

# Resolve the run folder and K from the config with cxrad itself (one source of truth).
paths=$($CXRAD_BIN run "$config" --workdir "$workdir" --dry-run --json)
run=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["run"])' <<<"$paths")
# One array task per (module, member): 2K with both modules (NDM and UDM), K with one.
tasks=$(python3 -c 'import json,sys; e=json.load(sys.stdin)["config_resolved"]["method_tables"]["ensemble"]; print((2 if e["module"] == "both" else 1) * e["members"])' <<<"$paths")
last=$((tasks - 1))

common=(--parsable --chdir "$workdir" --export "ALL,CXRAD_CONFIG=$config,CXRAD_WORKDIR=$workdir,CXRAD_RUN=$run,CXRAD_SLURM_DIR=$here")
# shellcheck disable=SC2086
extra=(${CXRAD_SBATCH_ARGS:-})
j1=$(sbatch "${common[@]}" "${extra[@]}" "$here/prepare.sbatch")
j2=$(sbatch "${common[@]}" "${extra[@]}" --dependency="afterok:${j1%%;*}" --array="0-$last" "$here/train_ensemble.sbatch")
j3=$(sbatch "${common[@]}" "${extra[@]}" --dependency="afterok:${j2%%;*}" "$here/refine.sbatch")
j4=$(sbatch "${common[@]}" "${extra[@]}" --dependency="afterok:${j3%%;*}" "$here/evaluate.sbatch")
echo "submitted: prepare $j1, train-ensemble $j2 (array 0-$last), refine $j3, evaluate $j4"
echo "run folder: $run"
