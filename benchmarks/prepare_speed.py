"""Speed and peak memory of `cxrad prepare` (issue 2 acceptance: >= 400 images/s, < 1 GB on 2 cores).

Cases:
  kermany-5840   all 5,840 Kermany 224x224 JPEGs read from the tar (labels from its labels.csv;
                 Dn = the 1,341 train normals' worth, Du = the rest, so every image is decoded and stored)
  dicom-1955     the 1955x1841 MONOCHROME1 chest DICOM, 8 copies (throughput per large radiograph)

Each case runs `python -m cxrad.cli prepare` as a subprocess; peak RSS is the largest *sum* of the
resident sizes of that process and all its descendants (the decoding workers), sampled from /proc
every 10 ms. Prints a table and writes benchmarks/results/prepare_speed-<host>-<N>cpu.{json,md}
(``--results`` another folder).

    CXRAD_DATA=/path/to/data python benchmarks/prepare_speed.py [--workers N]

The data root ($CXRAD_DATA or ``--data``; benchmarks/bench_data.py) holds
kermany-pneumonia-224/{kermany_pneumonia_224.tar,labels.csv} and dicom/pydicom-data_RG1_UNCR_chest_CR.dcm.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_data import KERMANY_224, RESULTS, data_file  # benchmarks/ is the script dir

KERMANY_LABELS = KERMANY_224.parent / "labels.csv"
RG1_DICOM = Path("dicom") / "pydicom-data_RG1_UNCR_chest_CR.dcm"
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` plus all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * PAGE
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def run_case(args: list[str]) -> dict:
    """Run `cxrad prepare ARGS`; return wall seconds, peak tree RSS and the manifest timings."""
    env = {**os.environ, "CXRAD_NO_PROGRESS": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "cxrad.cli", "prepare", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.01)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    wall = time.monotonic() - t0
    th.join()
    if proc.returncode:
        raise SystemExit(f"prepare failed ({proc.returncode}):\n{err}")
    out = Path(args[args.index("--out") + 1])
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": peak[0] / 2**20, "timings_s": manifest["timings_s"],
            "summary": manifest["summary"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="data root [default: $CXRAD_DATA]")
    ap.add_argument("--workers", type=int, default=None, help="default: the CPUs this process may use")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for the .json/.md [default: %(default)s]")
    opt = ap.parse_args()
    ncpu = len(os.sched_getaffinity(0))
    workers = opt.workers or ncpu
    tar = data_file(KERMANY_224, opt.data)
    labels = data_file(KERMANY_LABELS, opt.data)
    dcm = data_file(RG1_DICOM, opt.data)
    results = {"host": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
               "usable_cpus": ncpu, "workers": workers, "python": platform.python_version(), "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        r = run_case([str(tar), "--labels", str(labels), "--out", str(tmp / "k"), "--workers", str(workers),
                      "--normal-count", "1341", "--unlabeled-count", "3875"])
        n = sum(s["count"] for s in r["summary"]["sets"].values())
        r.update(images=n, images_per_s_end_to_end=n / r["wall_s"],
                 images_per_s_decode=n / r["timings_s"]["decode"])
        results["cases"]["kermany-5840 (224x224 JPEG in tar)"] = r

        src = tmp / "dcm"
        src.mkdir()
        copies = 8
        rows = ["path,label,split"]
        for i in range(copies):
            shutil.copy(dcm, src / f"rg1_{i}.dcm")
            rows.append(f"rg1_{i}.dcm,0,{'normal' if i % 2 else 'test'}")
        (tmp / "dcm.csv").write_text("\n".join(rows) + "\n")
        r = run_case([str(src), "--labels", str(tmp / "dcm.csv"), "--out", str(tmp / "d"),
                      "--workers", str(workers)])
        r.update(images=copies, images_per_s_decode=copies / r["timings_s"]["decode"],
                 s_per_image_per_worker=r["timings_s"]["decode"] * min(workers, copies) / copies)
        results["cases"]["dicom-1955x1841 (MONOCHROME1, x8)"] = r

    lines = [f"# cxrad prepare speed — {results['host']}, {ncpu} usable CPUs ({results['cpu']}), "
             f"{workers} workers", "",
             "| case | images | wall s (incl. start-up) | images/s end-to-end | images/s decoding "
             "| peak RSS MB (tree) |",
             "|---|---|---|---|---|---|"]
    for name, r in results["cases"].items():
        lines.append(f"| {name} | {r['images']} | {r['wall_s']:.2f} | {r['images'] / r['wall_s']:.0f} | "
                     f"{r['images_per_s_decode']:.0f} | {r['peak_rss_mb']:.0f} |")
    text = "\n".join(lines)
    print(text)
    outdir = opt.results
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"prepare_speed-{results['host']}-{ncpu}cpu"
    (outdir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (outdir / f"{stem}.md").write_text(text + "\n")
    print(f"\nwritten: {outdir / stem}.json, .md")


if __name__ == "__main__":
    main()
