"""Do the maps ASR-Net learns from look like the maps it is applied to?

ASR-Net learns "anomaly" from FPI patches whose maps come from donor images of Du, and "normal" from
the maps of the Dn images around them. Both sets are images the ensembles trained on. At scoring it
sees test images, which no ensemble saw. This script prints, for a run, the mean image score
(mean over pixels) of A_inter and A_intra on each group, divided by the Dn mean:

  Dn               the normal training images (ASR-Net's background)
  Du donors        the Du images map-space FPI blends from (upper half by their own maps, as refine)
  Du other         the rest of Du
  test normal      unseen normal images     } test labels group the images for this report only;
  test abnormal    unseen abnormal images   } nothing here is tuned or selected

"unseen normal / Dn" is how far the background moves for images the ensembles never trained on;
"donor / Dn" is the contrast the synthetic anomalies teach. When the first approaches the second,
ASR-Net reads an unseen normal image as a patched one.

    python benchmarks/map_shift.py RUN [RUN ...] [--donor-fraction 0.5] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from cxrad.methods.ddad.asr_net import INPUT_CHANNELS

MAPS = INPUT_CHANNELS["dual"]  # the channels refine ranks donors by, in its order


def group_means(scores: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """{group: {map: (N,) image scores}} -> {group: {map: mean / mean over Dn}}."""
    base = {m: float(np.mean(scores["Dn"][m])) for m in MAPS}
    return {g: {m: float(np.mean(v[m])) / base[m] for m in MAPS} for g, v in scores.items()}


def run_groups(run: Path, donor_fraction: float) -> dict[str, dict[str, np.ndarray]]:
    from cxrad.io.store import load_split
    from cxrad.methods.ddad.ensembles import maps_of_images, open_ensembles
    from cxrad.methods.ddad.refinement import top_donors
    from cxrad.runs import open_run

    info = open_run(run)
    ens = open_ensembles(info, torch.device("cpu"), need_udm=True, command="benchmarks/map_shift.py")
    out: dict[str, dict[str, np.ndarray]] = {}
    _, out["Dn"] = maps_of_images(ens, load_split(info.prepared, "normal").images)
    du_maps, du = maps_of_images(ens, load_split(info.prepared, "unlabeled").images)
    stacked = torch.as_tensor(np.stack([du_maps[m] for m in MAPS], axis=1))
    kept = np.unique(top_donors(stacked, donor_fraction).numpy())
    other = np.setdiff1d(np.arange(len(stacked)), kept)
    out["Du donors"] = {m: du[m][kept] for m in MAPS}
    out["Du other"] = {m: du[m][other] for m in MAPS}
    test = load_split(info.prepared, "test")
    _, ts = maps_of_images(ens, test.images)
    out["test normal"] = {m: ts[m][test.labels == 0] for m in MAPS}
    out["test abnormal"] = {m: ts[m][test.labels == 1] for m in MAPS}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--donor-fraction", type=float, default=0.5, help="as `cxrad refine --donor-fraction`")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"mean image score / mean over Dn (donors: upper {args.donor_fraction:g} of Du)\n")
    print(f"| run | map | {' | '.join(('Dn', 'Du donors', 'Du other', 'test normal', 'test abnormal'))} |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        rel = group_means(run_groups(run, args.donor_fraction))
        for m in MAPS:
            print(f"| {run.name} | {m} | " + " | ".join(f"{rel[g][m]:.2f}" for g in rel) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
