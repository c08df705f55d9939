"""Where SimSID's CPU training time goes: each component timed alone (forward + backward, the shapes
of one training batch), then whole training steps through the real trainer.

    python benchmarks/simsid_profile.py --size 64 --threads 2 --reps 3

Components: encoder (in-conv + 4 down blocks on the patches), in-painting block (1x1 convs,
memory-queue read, attention, feed-forward), student decoder (with its two learned memories),
teacher decoder, discriminator (per generator step: D(x), D(recon.detach()), D(recon) forwards,
two backward passes). Median of ``--reps`` runs (the machine is shared: medians, not minima).
Writes a markdown table to stdout (benchmarks/results/simsid-profile.md records one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="whole training batches timed through the trainer")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from cxrad.methods.simsid.config import SimSIDConfig
    from cxrad.methods.simsid.memory import to_patches
    from cxrad.methods.simsid.model import INNER
    from cxrad.methods.simsid.trainer import SimSIDTrainer, build_networks

    cfg = SimSIDConfig(size=args.size, batch_size=args.batch).validate()
    gen, disc = build_networks(cfg)
    gen.train()
    disc.train()
    b = args.batch
    x = torch.rand(b, 1, cfg.size, cfg.size) * 2 - 1

    def encode(inp):
        z = gen.inc(to_patches(inp, cfg.grid))
        skips, sizes = [], []
        for i, down in enumerate(gen.downs):
            side = z.shape[-1]
            sizes.append((side * cfg.grid,) * 2 if i < 4 - INNER else (side, side))
            skips.append(z)
            z = down(z)
        return z, skips[::-1][:INNER], sizes[::-1]

    with torch.no_grad():
        z0, skips0, sizes = encode(x)
        bott0 = gen.inpaint(z0)
        recon0 = gen.student(bott0, skips0, sizes)[0]

    def enc():
        z, skips, _ = encode(x)
        (z.sum() + sum(s.sum() for s in skips)).backward()

    def inpaint():
        z = z0.clone().requires_grad_(True)
        gen.inpaint(z).sum().backward()
        gen.inpaint.pending = None

    def decoder(dec):
        def run():
            z = bott0.clone().requires_grad_(True)
            dec(z, [s.clone().requires_grad_(True) for s in skips0], sizes)[0].sum().backward()
        return run

    def discriminate():
        r = recon0.clone().requires_grad_(True)
        (disc(x).sum() + disc(r.detach()).sum()).backward()
        disc(r).sum().backward()

    rows = [("encoder", enc), ("in-painting block", inpaint), ("student decoder", decoder(gen.student)),
            ("teacher decoder", decoder(gen.teacher)), ("discriminator (3 fwd, 2 bwd)", discriminate)]
    timed = [(name, _median_time(fn, args.reps)) for name, fn in rows]

    def fwd_only():
        with torch.no_grad():
            gen(x, teacher=False)
    fwd_s = _median_time(fwd_only, args.reps)

    total = sum(t for _, t in timed)
    print(f"SimSID CPU profile: {cfg.size} px, batch {b}, {args.threads} torch threads, median of {args.reps}\n")
    print("| component (forward + backward, one generator step) | seconds | share |")
    print("|---|---:|---:|")
    for name, t in timed:
        print(f"| {name} | {t:.3f} | {100 * t / total:.0f}% |")
    print(f"| sum | {total:.3f} | |")
    print(f"| student forward alone, no grad (a discriminator-only batch) | {fwd_s:.3f} | |")

    images = torch.rand(args.steps * b, cfg.size, cfg.size).numpy()
    trainer = SimSIDTrainer(images, cfg, torch.device("cpu"))
    t0 = time.perf_counter()
    trainer.run_epoch()
    step_s = (time.perf_counter() - t0) / args.steps
    print(f"\nwhole batches through SimSIDTrainer.run_epoch ({args.steps} batches, generator on every "
          f"{cfg.critic_steps}nd): {step_s:.2f} s per batch; an epoch of 1000 images "
          f"(63 batches) ~ {63 * step_s / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
