"""Score fusion across runs (issue 18, item 4: "a map ensemble across backbones"), analysis only.

Each input is ``RUN:SCORE`` (e.g. ``runs/ae-…-s0:R_dual``). Every score is put on a common scale
with the statistics of the run's own **normal training images** (``RUN/maps/normal.h5``): z =
(s − mean_normal) / sd_normal, so no test label and no test-score statistic enters the fusion. The
fused score is the mean of the z-scores. Prints AUC / AP of every input and of the fusion, with the
paired DeLong p of the fusion against the best single input, and appends one JSON line to
``--results``. Decide on the dev split (benchmarks/splits/zhanglab-dev.csv), then report on test.

    python benchmarks/score_fusion.py --split test --tag ae+aeu-s0 \\
        W/runs/ae-e30-a5-k3-s0:R_dual W/runs/aeu-e30-a5-k3-s0:R_dual
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from bench_data import RESULTS
from bench_record import append_jsonl, git_commit


def normal_standardised(scores: np.ndarray, normal_scores: np.ndarray) -> np.ndarray:
    """(N,) scores -> (N,) z-scores against the normal images' (M,) scores (mean, population sd)."""
    sd = float(np.std(normal_scores))
    if not np.isfinite(sd) or sd <= 0:
        raise ValueError("the normal images' scores have no spread; they cannot set a scale")
    return (np.asarray(scores, np.float64) - float(np.mean(normal_scores))) / sd


def fuse(scores: list[np.ndarray], normal_scores: list[np.ndarray]) -> np.ndarray:
    """Mean of the normal-standardised scores: K arrays of (N,) (and their K normal (M_k,)) -> (N,)."""
    return np.mean([normal_standardised(s, n) for s, n in zip(scores, normal_scores)], axis=0)


def _read(spec: str, split: str) -> tuple[str, np.ndarray, np.ndarray, list[str], np.ndarray]:
    from cxrad.io.maps_store import read_maps_h5

    run, _, name = spec.rpartition(":")
    if not run or not name:
        sys.exit(f"{spec}: give RUN:SCORE, e.g. runs/ae-e30-a5-k3-s0:R_dual")
    maps = Path(run) / "maps"
    target, normal = (read_maps_h5(maps / f"{split}.h5", maps=False), read_maps_h5(maps / "normal.h5", maps=False))
    if name not in target.scored.scores or name not in normal.scored.scores:
        sys.exit(f"{spec}: no score {name} in {maps}; scored: {sorted(target.scored.scores)}")
    return (spec, np.asarray(target.scored.scores[name], np.float64),
            np.asarray(normal.scored.scores[name], np.float64), target.ids, np.asarray(target.labels))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="RUN:SCORE, two or more")
    ap.add_argument("--split", default="test")
    ap.add_argument("--tag", required=True, help="name of this fusion in the record")
    ap.add_argument("--results", type=Path, default=RESULTS / "score_fusion.jsonl")
    args = ap.parse_args(argv)
    if len(args.inputs) < 2:
        ap.error("give two or more RUN:SCORE inputs")
    from cxrad.metrics import auc, average_precision
    from cxrad.metrics_ci import paired_delong_p

    read = [_read(s, args.split) for s in args.inputs]
    ids, labels = read[0][3], read[0][4]
    for spec, _, _, other_ids, _ in read[1:]:
        if other_ids != ids:
            sys.exit(f"{spec}: its {args.split} images differ from {read[0][0]}'s (same prepared split needed)")
    fused = fuse([r[1] for r in read], [r[2] for r in read])
    singles = {spec: (auc(labels, s), average_precision(labels, s)) for spec, s, *_ in read}
    best = max(singles, key=lambda k: singles[k][0])
    best_scores = next(r[1] for r in read if r[0] == best)
    record = {
        "tag": args.tag, "split": args.split, "n": len(ids), "commit": git_commit(),
        "inputs": {k: {"auc": round(100 * a, 2), "ap": round(100 * p, 2)} for k, (a, p) in singles.items()},
        "fused": {"auc": round(100 * auc(labels, fused), 2), "ap": round(100 * average_precision(labels, fused), 2)},
        "best_single": best, "p_fused_vs_best": float(paired_delong_p(labels, fused, best_scores)),
        "scale": "z against each run's normal training images",
    }
    for k, v in record["inputs"].items():
        print(f"{v['auc']:6.2f} / {v['ap']:6.2f}  {k}")
    print(f"{record['fused']['auc']:6.2f} / {record['fused']['ap']:6.2f}  fused ({args.tag}); "
          f"paired DeLong p vs best single = {record['p_fused_vs_best']:.3g}")
    append_jsonl(args.results, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
