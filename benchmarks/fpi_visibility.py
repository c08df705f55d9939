"""How much does an image-space FPI patch change the discrepancy maps ASR-Net reads?

For the first N recipes of a synth artifact's epoch 0 (image-space blends of two normal training
images), computes the maps of the patched image and of its clean source with the run's frozen
ensembles, and prints the geometric mean of patched/clean per map, inside the patch (all α, and
α > 0.5) and outside it. A ratio near 1 inside the patch means ASR-Net gets no local signal from
that map: it can only learn where patches tend to lie.

    python benchmarks/fpi_visibility.py RUN [--synth RUN/synth] [--count 400]

No labels are read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--synth", type=Path, help="a synth artifact (default RUN/synth); its recipes are applied "
                                               "in image space with donors from the normal set")
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from cxrad.io.store import load_split
    from cxrad.methods.ddad.ensembles import open_ensembles, to_network_space
    from cxrad.methods.ddad.fpi import RECIPE_FIELDS, Recipes, apply_recipes
    from cxrad.methods.ddad.recipes_store import read_recipes
    from cxrad.runs import open_run

    info = open_run(args.run)
    ens = open_ensembles(info, torch.device("cpu"), need_udm=True, command="benchmarks/fpi_visibility.py")
    pool = to_network_space(torch.as_tensor(load_split(info.prepared, "normal").images))
    r = read_recipes(args.synth or info.layout.synth, 0)
    keep = np.flatnonzero(r.patched)[: args.count]
    r = Recipes(*(getattr(r, f)[keep] for f in RECIPE_FIELDS))
    # donors of map-space recipes index the unlabelled set; redraw them inside the normal pool so the
    # blend is the reference's image-space FPI (donor ≠ source)
    rng = np.random.default_rng(0)
    r.donor = (r.source + rng.integers(1, len(pool), size=len(keep))) % len(pool)
    xs, mask = apply_recipes(pool, r)
    with torch.no_grad():
        patched, clean = ens.maps(xs), ens.maps(pool[torch.as_tensor(r.source)])
    inside = mask.bool()
    strong = inside & torch.as_tensor(r.alpha > 0.5)[:, None, None]
    print(f"{len(keep)} patched recipes, image-space blend; geometric mean of patched/clean map values")
    print(f"{'map':8s} {'inside':>8s} {'inside α>0.5':>13s} {'outside':>8s}")
    for name in ("A_rec", "A_intra", "A_inter"):
        a, c = patched[name].double(), clean[name].double().clamp_min(1e-8)
        ratio = (a.clamp_min(1e-8) / c).log()

        def gm(sel):
            return float(ratio[sel].mean().exp())
        print(f"{name:8s} {gm(inside):8.3f} {gm(strong):13.3f} {gm(~inside):8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
