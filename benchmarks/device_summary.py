"""summary.md of a benchmarks/device_check.sh run: step times, AUCs, the bf16 - fp32 AUC difference.

    python benchmarks/device_summary.py OUT > OUT/summary.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fmt(auc: dict | None) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in (auc or {}).items()) or "—"


def summarize(out: Path) -> str:
    env = (out / "env.txt").read_text().strip() if (out / "env.txt").is_file() else "(no env.txt)"
    md = ["# device check", "", "```", env, "```", "", "## Steps", "", "| step | exit | seconds | limit |",
          "|---|---|---|---|"]
    for s in _lines(out / "steps.jsonl"):
        if "skipped" in s:
            md.append(f"| {s['step']} | skipped ({s['skipped']}) | | |")
        else:
            note = " (stopped at its limit)" if s["rc"] == 124 else ""
            md.append(f"| {s['step']} | {s['rc']}{note} | {s['wall_s']} | {s['limit_s']} |")

    runs = _lines(out / "zhanglab.jsonl")
    md += ["", "## DDAD-ASR on ZhangLab-OCSSL-64 (official test split)", "",
           "| ensembles | epochs / ASR epochs | AUC | AP | wall s (ensembles, refine) |", "|---|---|---|---|---|"]
    for r in runs:
        t = r.get("timings_s", {})
        md.append(f"| {'bf16' if r.get('amp') else 'fp32'} | {r['epochs']} / {r['asr_epochs']} | {_fmt(r['auc'])} | "
                  f"{_fmt(r['ap'])} | {t.get('train-ensemble')}, {t.get('refine-dual')} |")
    fp32 = next((r for r in runs if not r.get("amp")), None)
    bf16 = next((r for r in runs if r.get("amp")), None)
    if fp32 and bf16:
        diff = {k: bf16["auc"][k] - fp32["auc"][k] for k in fp32["auc"] if k in bf16["auc"]}
        speed = {stage: fp32["timings_s"][stage] / max(bf16["timings_s"][stage], 1e-9)
                 for stage in ("train-ensemble", "refine-dual")}
        md += ["", f"bf16 − fp32 AUC (points): {_fmt(diff)}; speed-up with bf16: ensembles "
                   f"{speed['train-ensemble']:.2f}×, ASR-Net {speed['refine-dual']:.2f}×"]

    simsid = _lines(out / "simsid.jsonl")
    if simsid:
        md += ["", "## SimSID", "", "```"] + [json.dumps(r) for r in simsid] + ["```"]
    speed_files = sorted(out.glob("train_speed-*.md"))
    for f in speed_files:
        md += ["", f.read_text().replace("# train_speed", "## train_speed", 1)]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/device_summary.py OUT")
    sys.stdout.write(summarize(Path(sys.argv[1])))
