#!/usr/bin/env bash
# One script for a lent GPU: every figure cxrad still owes a CUDA device, in one command of under
# 9 minutes, written under $OUT (at most 8 files, as the device tool brings back).
#
#   OUT=/tmp/out CXRAD_DATA=/path/to/data bash benchmarks/device_check.sh
#   OUT=/tmp/out bash benchmarks/device_check.sh --dry-run     # CPU, sample_data, 1-2 epochs (tests)
#
# Steps, each under its own time limit, in the order of what matters most; a step that runs out of
# time is stopped with SIGTERM (training stages then checkpoint and exit) and the next one starts:
#   1. zhanglab-full   DDAD-ASR at the paper's budget on ZhangLab-OCSSL-64: AE, K = 3, 250 ensemble
#                      epochs, 100 ASR epochs, R_dual, seed 0, fp32, test AUC after every ASR epoch
#                      for the report (benchmarks/zhanglab.py --log-epoch-auc)
#   2. simsid-full     SimSID at the official budget: 128 px, 1000 epochs (benchmarks/simsid_zhanglab.py);
#                      stopped at its limit it reports how far it got
#   3. train-speed     ensemble seconds/epoch: batched K members vs one member at a time vs a textbook
#                      loop, AE and AE-U (benchmarks/train_speed.py)
#   4. zhanglab-amp    step 1 again with bf16 autocast in the ensembles and ASR-Net: speed-up and AUC difference
# then summary.md: wall time per step, AUC of every score, bf16 - fp32 AUC difference.
#
# Files under $OUT: device_check.log (every step's output), steps.jsonl (step, exit code, seconds),
# zhanglab.jsonl, simsid.jsonl, train_speed-<device>.json/.md, env.txt, summary.md.
#
# With the device tool (nothing can be downloaded there; pydicom and the data must travel):
#   here:  echo /.whl/ >> .git/info/exclude; echo /.devdata/ >> .git/info/exclude
#          python3 -m pip download --no-deps -d .whl pydicom
#          mkdir -p .devdata && cp -r "$CXRAD_DATA/kermany-pneumonia-224" .devdata/
#   run:   carry [".whl", ".devdata"], command "OUT=$OUT CXRAD_DATA=.devdata bash benchmarks/device_check.sh"
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
REPO=$PWD
MODE=full
[ "${1:-}" = "--dry-run" ] && MODE=dry
WORK=${CXRAD_CHECK_WORK:-$(mktemp -d /tmp/cxrad-device-check.XXXXXX)}
LOG=$OUT/device_check.log
export CXRAD_NO_PROGRESS=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python

if [ "$MODE" = full ]; then
    : "${CXRAD_DATA:?set CXRAD_DATA to the folder holding kermany-pneumonia-224/}"
    DEVICE=cuda
    DATA=(--data "$CXRAD_DATA")
    ZL_SIZE=64
    ZL=(--variant full --size "$ZL_SIZE")       # 250 / 100 epochs
    SIMSID=(--size 128 --epochs 1000 --seeds 0)
    SPEED=(--epochs 2)
    LIMIT_ZL=200 LIMIT_SIMSID=150 LIMIT_SPEED=60 LIMIT_AMP=120
else
    DEVICE=cpu
    DATA=(--source sample_data --labels sample_data/labels.csv)
    ZL_SIZE=32                                  # bf16 (step 4) is slow on CPUs without AVX512-BF16
    ZL=(--epochs 1 --asr-epochs 1 --batch-size 16 --size "$ZL_SIZE")
    SIMSID=(--size 64 --epochs 1 --seeds 0 --batch-size 8)
    SPEED=(--epochs 1 --batch-size 8 --backbones ae)
    LIMIT_ZL=300 LIMIT_SIMSID=300 LIMIT_SPEED=300 LIMIT_AMP=300
fi

# cxrad itself: the checkout, plus wheels carried in .whl/ (packages the machine lacks)
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/cxrad-site .whl/*.whl >>"$LOG" 2>&1
    export PYTHONPATH=/tmp/cxrad-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$REPO:${PYTHONPATH:-}

{
    date -u +"start %Y-%m-%dT%H:%M:%SZ"; echo "mode $MODE, device $DEVICE, work $WORK"
    git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "commit unknown"
    "$PY" -c "import torch, cxrad; print('cxrad', cxrad.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
} >"$OUT/env.txt" 2>&1

step() {   # step NAME LIMIT_S COMMAND...: run it under `timeout`, log it, record its exit code and time
    local name=$1 limit=$2 t0 rc
    shift 2
    if [ "$limit" -le 0 ]; then
        echo "{\"step\": \"$name\", \"skipped\": \"not in $MODE mode\"}" >>"$OUT/steps.jsonl"
        return
    fi
    echo "=== $name (limit ${limit}s): $*" >>"$LOG"
    t0=$SECONDS
    timeout -s TERM -k 20 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    echo "{\"step\": \"$name\", \"rc\": $rc, \"limit_s\": $limit, \"wall_s\": $((SECONDS - t0))}" >>"$OUT/steps.jsonl"
    echo "=== $name: exit $rc" >>"$LOG"
}

step zhanglab-full "$LIMIT_ZL" "$PY" benchmarks/zhanglab.py "${ZL[@]}" "${DATA[@]}" --backbone ae --seed 0 \
    --refine-inputs dual --log-epoch-auc --device "$DEVICE" --workdir "$WORK" --results "$OUT"
if [ -f benchmarks/simsid_zhanglab.py ]; then
    step simsid-full "$LIMIT_SIMSID" "$PY" benchmarks/simsid_zhanglab.py "${SIMSID[@]}" "${DATA[@]}" \
        --device "$DEVICE" --workdir "$WORK" --results "$OUT"
fi
# the folder step 1 prepared (64 px, 32 in the dry run; SimSID's lies beside it at its own size);
# its name carries the intensity tag (benchmarks/bench_data.py)
PREPARED=$(ls -d "$WORK"/prepared/*-"$ZL_SIZE" "$WORK"/prepared/*-"$ZL_SIZE"-* 2>/dev/null | head -n 1)
step train-speed "$LIMIT_SPEED" "$PY" benchmarks/train_speed.py "${SPEED[@]}" --device "$DEVICE" \
    --from-prepared "$PREPARED" --results "$OUT"
step zhanglab-amp "$LIMIT_AMP" "$PY" benchmarks/zhanglab.py "${ZL[@]}" "${DATA[@]}" --backbone ae --seed 0 \
    --refine-inputs dual --log-epoch-auc --device "$DEVICE" --workdir "$WORK" --results "$OUT" --amp   # as step 1

"$PY" benchmarks/device_summary.py "$OUT" >"$OUT/summary.md" 2>>"$LOG"
echo "device check ($MODE) finished; figures in $OUT" | tee -a "$LOG"
# a failed step fails the check; on a GPU a step stopped at its limit (124) is a result, not a failure
if [ "$MODE" = dry ]; then bad='"rc": [1-9]'; else bad='"rc": ([1-9]|[1-9][0-9]|1[013-9][0-9]|12[0-35-9]|[2-9][0-9][0-9])[,}]'; fi
! grep -Eq "$bad" "$OUT/steps.jsonl"
