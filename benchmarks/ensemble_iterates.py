"""How much do A_inter and A_intra move from one epoch to the next, and does averaging the weights
steady them?

Trains the NDM and UDM ensembles of a prepared folder exactly as `cxrad train-ensemble` does
(same seeds, paired or not, same batches) and after every epoch prints the test-set AUC of the
image-level A_inter and A_intra computed from three versions of the same training:

- ``last``: the weights of the last step (the reference, ``--ema-decay 0``);
- ``ema``:  the exponential moving average cxrad keeps (``--ema-decay``), BN statistics recomputed;
- ``tail``: the uniform average of the end-of-epoch weights over the second half of training
  (stochastic weight averaging), BN statistics recomputed; printed from the middle on.

    python benchmarks/ensemble_iterates.py PREPARED [--seed 0] [--epochs 30] [--ema-decay 0.998]

Test labels are read for this report only; no setting is chosen from it inside cxrad.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


@torch.no_grad()
def _update_tail(tail: dict, trainers: dict, n: int) -> None:
    """Running mean of each module's weights over the epochs of the second half (n so far)."""
    for module, tr in trainers.items():
        if module not in tail:
            tail[module] = copy.deepcopy(tr.model)
        else:
            for pt, p in zip(tail[module].parameters(), tr.model.parameters()):
                pt.lerp_(p, 1.0 / n)


def main(argv=None) -> int:
    from cxrad.io.store import load_split
    from cxrad.methods.ddad import losses
    from cxrad.methods.ddad.config import EnsembleConfig
    from cxrad.methods.ddad.discrepancy import discrepancy_maps
    from cxrad.methods.ddad.train_ensemble import member_seed
    from cxrad.methods.ddad.trainer import GroupTrainer, full_batches
    from cxrad.methods.ddad.weight_average import precise_bn
    from cxrad.scores import image_score

    d = EnsembleConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prepared", type=Path)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--members", type=int, default=d.members)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--ema-decay", type=float, default=d.ema_decay)
    ap.add_argument("--independent-init", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the per-epoch records as JSON lines here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    normal = load_split(args.prepared, "normal").images
    data = {"ndm": torch.from_numpy(normal) * 2 - 1,
            "udm": torch.from_numpy(np.concatenate([normal, load_split(args.prepared, "unlabeled").images])) * 2 - 1}
    if len(normal) < args.batch_size:
        ap.error(f"{args.prepared}: {len(normal)} normal images, fewer than --batch-size {args.batch_size}")
    test = load_split(args.prepared, "test")
    x_test = torch.from_numpy(np.asarray(test.images, np.float32))[:, None] * 2 - 1
    y = np.asarray(test.labels)
    arch = dict(size=normal.shape[-1], latent_dim=d.latent_dim, memory_items=d.memory_items,
                shrink_threshold=d.shrink_threshold)
    loss_fn = losses.for_backbone("ae", d.entropy_weight)
    trainers = {}
    for module in data:
        seeds = [member_seed(args.seed, module, i, paired=not args.independent_init) for i in range(args.members)]
        trainers[module] = GroupTrainer("ae", seeds, arch, d.lr, d.betas, d.weight_decay, torch.device("cpu"),
                                        ema_decay=args.ema_decay)

    @torch.no_grad()
    def aucs(ndm, udm) -> tuple[float, float]:
        was = ndm.training, udm.training
        ndm.eval(), udm.eval()
        maps = discrepancy_maps(x_test, ndm(x_test), udm(x_test))
        ndm.train(was[0]), udm.train(was[1])
        return tuple(round(100 * roc_auc_score(y, image_score(maps[k])), 2) for k in ("A_inter", "A_intra"))

    def with_precise_bn(model, module):
        return precise_bn(copy.deepcopy(model), full_batches(data[module], args.batch_size))

    tail, tail_n = {}, 0
    out = args.out.open("w") if args.out else None
    print(f"seed {args.seed}, test AUC (%) of A_inter / A_intra per epoch")
    print(f"{'epoch':>5s} {'last':>13s} {'ema':>13s} {'tail':>13s} {'s':>6s}")
    for epoch in range(1, args.epochs + 1):
        t0 = time.monotonic()
        for module, tr in trainers.items():
            tr.run_epoch(data[module], args.batch_size, loss_fn)
        rec = {"epoch": epoch, "last": aucs(trainers["ndm"].model, trainers["udm"].model)}
        if args.ema_decay > 0:
            rec["ema"] = aucs(*(t.final_model(data[m], args.batch_size) for m, t in trainers.items()))
        if epoch > args.epochs // 2:
            tail_n += 1
            _update_tail(tail, trainers, tail_n)
            rec["tail"] = aucs(*(with_precise_bn(tail[m], m) for m in trainers))
        rec["s"] = round(time.monotonic() - t0, 1)

        def fmt(v):
            return f"{v[0]:5.1f} / {v[1]:5.1f}" if v else " " * 13
        print(f"{epoch:5d} {fmt(rec['last'])} {fmt(rec.get('ema'))} {fmt(rec.get('tail'))} {rec['s']:6.1f}", flush=True)
        if out:
            out.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
