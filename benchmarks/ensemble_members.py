"""How much of the seed-to-seed spread of A_inter is the luck of which K members a run draws?

Loads the trained NDM/UDM ensembles of one or more finished runs (AE backbone, same prepared data)
and prints, on the test split:

- per run: A_rec AUC of every NDM and UDM member alone, and the A_inter AUC of every single
  (NDM member i, UDM member j) pair, |x̂_NDM,i − x̂_UDM,j|, next to the run's A_inter;
- pooled over all runs' P pairs (member i of NDM with member i of UDM, as trained together):
  the A_inter AUC of every subset of K pairs, i.e. the distribution a run with K members samples
  from, the expected range of three such runs, and the same for 2K members.

    python benchmarks/ensemble_members.py PREPARED RUN [RUN ...] [--k 3]

Test labels are read for this report only; nothing in cxrad is chosen from it.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def main(argv=None) -> int:
    from cxrad.io.store import load_split
    from cxrad.methods.ddad.discrepancy import a_inter, ensemble_mean
    from cxrad.methods.ddad.ensembles import load_module, read_ensemble
    from cxrad.runs import open_run
    from cxrad.scores import image_score

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prepared", type=Path)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--k", type=int, default=3, help="members per run to simulate")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    test = load_split(args.prepared, "test")
    x = torch.from_numpy(np.asarray(test.images, np.float32))[:, None] * 2 - 1
    y = np.asarray(test.labels)

    def auc(score: torch.Tensor) -> float:
        return round(100 * roc_auc_score(y, score.numpy()), 1)

    def load_ensemble(run: Path, module: str):
        """The run's frozen ``module`` ensemble on the CPU; refused unless every member is trained."""
        info = open_run(run)
        read_ensemble(info, command="benchmarks/ensemble_members.py")
        return load_module(info, module, "cpu")

    ndm, udm = [], []
    with torch.no_grad():
        for run in args.runs:
            n, u = load_ensemble(run, "ndm")(x), load_ensemble(run, "udm")(x)      # (K, B, 1, H, W)
            ndm.append(n), udm.append(u)
            k = len(n)
            print(run)
            print("  A_rec AUC, NDM members", [auc(image_score((n[i, :, 0] - x[:, 0]) ** 2)) for i in range(k)],
                  " UDM members", [auc(image_score((u[i, :, 0] - x[:, 0]) ** 2)) for i in range(k)])
            print("  A_inter AUC of pair (NDM i, UDM j):")
            for i in range(k):
                print("   ", [auc(image_score((n[i, :, 0] - u[j, :, 0]).abs())) for j in range(k)])
            print("  A_inter AUC of the run", auc(image_score(a_inter(ensemble_mean(u), ensemble_mean(n)))))
    n, u = torch.cat(ndm), torch.cat(udm)

    def subset_auc(idx) -> float:
        idx = list(idx)
        return auc(image_score(a_inter(ensemble_mean(u[idx]), ensemble_mean(n[idx]))))

    pairs = len(n)
    print(f"\npooled: {pairs} pairs, A_inter AUC with all of them {subset_auc(range(pairs))}")
    rng = np.random.default_rng(0)
    for k in (args.k, 2 * args.k):
        if k > pairs:
            continue
        vals = np.array([subset_auc(c) for c in itertools.combinations(range(pairs), k)])
        spans = np.array([np.ptp(rng.choice(vals, 3, replace=False)) for _ in range(20000)])
        print(f"K = {k}: {len(vals)} subsets, A_inter AUC mean {vals.mean():.1f}, sd {vals.std():.2f}, "
              f"range {vals.min():.1f}-{vals.max():.1f}; range of 3 runs: median {np.median(spans):.1f}, "
              f"P(<= 2 points) {np.mean(spans <= 2):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
