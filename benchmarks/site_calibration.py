"""Does `cxrad predict --calibrate-on` fix the threshold at a new site? Kermany's official test set as the site.

A finished ZhangLab-OCSSL-64 run (benchmarks/zhanglab.py) takes its threshold from its training
normals. Kermany's 624 official test images (234 normal, 390 pneumonia) play a new site: a seeded
half of its normal *patients* is the site's known-normal folder (``--calibrate-on``); the other
normals and every pneumonia image are the archive to score. The archive is predicted twice, with
the run's threshold and with the calibrated one, and sensitivity / specificity / accuracy of the
decision score are printed and appended to benchmarks/results/site_calibration.jsonl. Labels are
read only to report; the calibration images are never among those scored.

    CXRAD_DATA=/path/to/data python benchmarks/site_calibration.py RUN --workdir W [--seed 0]

The Kermany 224-px tar is read from $CXRAD_DATA (or ``--data``, or ``--source``): see benchmarks/bench_data.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import tarfile
import time
from pathlib import Path

import numpy as np
from bench_data import KERMANY_224, RESULTS, data_file  # benchmarks/ is the script dir
from bench_record import git_commit


def _patient(name: str) -> str:
    """Kermany normal files are ``[NORMAL2-]IM-<patient>-<image>.jpeg``."""
    return re.sub(r"-\d+\.jpe?g$", "", name, flags=re.I)


def _extract_site(tar: Path, folder: Path, seed: int) -> None:
    """Unpack the test split into ``folder/calibration`` (half the normal patients) and ``folder/archive``."""
    calib, archive = folder / "calibration", folder / "archive"
    with tarfile.open(tar) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and "/test/" in m.name]
        normals = sorted({_patient(Path(m.name).name) for m in members if "/NORMAL/" in m.name})
        rng = np.random.default_rng(seed)
        held = set(rng.permutation(normals)[: len(normals) // 2].tolist())
        for m in members:
            name = Path(m.name).name
            normal = "/NORMAL/" in m.name
            dest = calib if normal and _patient(name) in held else archive
            dest.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(tf.extractfile(m).read())


def _rates(pred_csv: Path, labels: dict[str, int]) -> dict:
    rows = list(csv.DictReader(open(pred_csv)))
    y = np.array([labels[Path(r["path"]).name] for r in rows], bool)
    flag = np.array([r["abnormal"] == "1" for r in rows], bool)
    return {"threshold": float(rows[0]["threshold"]), "decision_score": rows[0]["decision_score"],
            "sensitivity": round(100 * float(flag[y].mean()), 1),
            "specificity": round(100 * float((~flag[~y]).mean()), 1),
            "accuracy": round(100 * float((flag == y).mean()), 1), "normals": int((~y).sum()), "abnormal": int(y.sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished run on ZhangLab-OCSSL-64")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0, help="which half of the test normals calibrates")
    ap.add_argument("--data", type=Path, help="data root [default: $CXRAD_DATA]")
    ap.add_argument("--source", type=Path, help="the Kermany 224-px tar [default: DATA/" + str(KERMANY_224) + "]")
    ap.add_argument("--results", type=Path, default=RESULTS / "site_calibration.jsonl")
    args = ap.parse_args(argv)

    from cxrad.config import PredictConfig
    from cxrad.stages.predict import predict

    site = args.workdir / f"site-s{args.seed}"
    if not (site / "archive").is_dir():
        _extract_site(args.source or data_file(KERMANY_224, args.data), site, args.seed)
    calib, archive = site / "calibration", site / "archive"
    # Kermany names normals IM-*/NORMAL2-IM-* and pneumonia person*_bacteria/virus_*
    labels = {f.name: 0 if f.name.upper().startswith(("IM-", "NORMAL")) else 1 for f in archive.iterdir()}
    cfg = PredictConfig(overlays=False)
    record = {"run": str(args.run.resolve()), "seed": args.seed, "calibration_images": len(list(calib.iterdir())),
              "host": platform.node(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "commit": git_commit()}
    for mode, calibration in (("run threshold", None), ("calibrated", [calib])):
        out = args.workdir / f"pred-s{args.seed}-{'calibrated' if calibration else 'run'}"
        t0 = time.perf_counter()
        result = predict(args.run, [archive], out, cfg, force=True, calibration=calibration)
        r = _rates(out / "predictions.csv", labels)
        r["source"], r["wall_s"] = result.threshold_source, round(time.perf_counter() - t0, 1)
        record[mode] = r
        print(f"{mode:14s} {r['decision_score']} > {r['threshold']:.4g}: sensitivity {r['sensitivity']:.1f} %, "
              f"specificity {r['specificity']:.1f} % ({r['normals']} normals), accuracy {r['accuracy']:.1f} %  "
              f"[{r['source']}; {r['wall_s']} s]")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
