"""Peak memory and speed of `cxrad predict` as the number of inputs grows (issue 19, item 10b).

Before streaming, `predict` held every decoded image, every map and every score of its input at
once: peak RSS grew by ~46 KB per image (1.25 GB for 624 images, 1.49 GB for 5,840), so a 1 M-study
archive would need ~46 GB. This benchmark runs `python -m cxrad.cli predict` as a subprocess over
600, 6,000 and 60,000 inputs and records wall time, images/s and peak memory:

  peak RSS      the largest resident size of the predict process or any of its decoding workers
                (``ru_maxrss`` of ``os.wait4`` on the child: the same figure as getrusage(RUSAGE_CHILDREN)
                or /usr/bin/time -v, but for this child alone)
  tree RSS      the largest *sum* of the resident sizes of the process and its workers, sampled from
                /proc every 20 ms (counts the pages the forked workers share with it once per process)
  tree PSS      the same sum of proportional set sizes (/proc/PID/smaps_rollup: a shared page is split
                between the processes sharing it): the memory the tree really occupies

The inputs are the first 600 Kermany test JPEGs (224x224) extracted from the tar under
``$CXRAD_DATA`` (benchmarks/bench_data.py), repeated through *hard links* in folders of 1,000: they are
distinct paths to `predict` (symbolic links would resolve to the same file and be scored once).

    CXRAD_DATA=/path/to/data python benchmarks/predict_memory.py --run RUN --label after
    CXRAD_DATA=... python benchmarks/predict_memory.py --run RUN --label before --code /tmp/old --sizes 600 6000

``--code DIR`` runs the cxrad package found in DIR (e.g. ``git archive <commit> | tar -x -C DIR``) instead
of this checkout, to measure an older version. Every case is merged into
benchmarks/results/predict_memory-cpu.json (a case with the same label, size and overlay setting is
replaced) and the .md table beside it is rewritten from all cases.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from bench_data import KERMANY_224, REPO, RESULTS, data_file  # benchmarks/ is the script dir

PAGE = os.sysconf("SC_PAGE_SIZE")
BASE_IMAGES = 600
STEM = "predict_memory-cpu"


def _pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _tree_mem(pid: int) -> tuple[int, int]:
    """Resident and proportional bytes of ``pid`` plus all its descendants (Linux /proc)."""
    rss, pss, stack = 0, 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                rss += int(fh.read().split()[1]) * PAGE
            pss += _pss(p)
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return rss, pss


def base_images(tar: Path, folder: Path, n: int = BASE_IMAGES) -> list[Path]:
    """The first ``n`` test JPEGs of the Kermany tar, extracted to ``folder`` (once)."""
    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(folder.glob("*.jpeg"))
    if len(have) >= n:
        return have[:n]
    with tarfile.open(tar) as tf:
        members = sorted((m for m in tf if m.isfile() and "/test/" in m.name and m.name.endswith(".jpeg")),
                         key=lambda m: m.name)[:n]
        for i, m in enumerate(members):
            data = tf.extractfile(m).read()  # type: ignore[union-attr]
            (folder / f"{i:04d}_{Path(m.name).parent.name}_{Path(m.name).name}").write_bytes(data)
    return sorted(folder.glob("*.jpeg"))[:n]


def link_inputs(base: list[Path], folder: Path, n: int) -> Path:
    """``n`` hard links to the ``base`` files, 1,000 per sub-folder (created once per size)."""
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for i in range(n):
        sub = folder / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        os.link(base[i % len(base)], sub / f"{i:07d}.jpeg")
    done.touch()
    return folder


def run_predict(run: Path, inputs: Path, out: Path, overlays: bool, code: Path, extra: list[str]) -> dict:
    """One `cxrad predict` subprocess: wall seconds, peak RSS (largest process), peak tree RSS and PSS."""
    env = {**os.environ, "CXRAD_NO_PROGRESS": "1", "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "cxrad.cli", "--no-progress", "predict", str(run), str(inputs), "--out", str(out),
           "--device", "cpu", "--overlays" if overlays else "--no-overlays", *extra]
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=code)
        peak_tree = [0, 0]
        finished = threading.Event()

        def sample() -> None:
            while not finished.is_set():
                rss, pss = _tree_mem(proc.pid)
                peak_tree[:] = max(peak_tree[0], rss), max(peak_tree[1], pss)
                time.sleep(0.02)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        finished.set()
        th.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"predict failed ({proc.returncode}): {' '.join(cmd)}\n{err.read()[-3000:]}")
    with open(out / "predictions.csv") as fh:
        rows = sum(1 for _ in csv.DictReader(fh))
    return {"images": rows, "wall_s": round(wall, 2), "images_per_s": round(rows / wall, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "peak_tree_rss_mb": round(peak_tree[0] / 2**20, 1),
            "peak_tree_pss_mb": round(peak_tree[1] / 2**20, 1)}


def _commit(code: Path) -> str:
    r = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def _mb(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def render(results: dict) -> str:
    lines = ["# cxrad predict: peak memory against the number of inputs (issue 19, item 10b)", "",
             f"Host {results['host']} ({results['cpu']}), {results['usable_cpus']} usable CPUs, CPU scoring. "
             "**Timings were taken on a busy machine** (2 cores shared with other engineers' builds and "
             "tests; the 60,000-image runs under `nice`): compare memory, and read wall times as rough.", "",
             f"Run: {results.get('run_note', '')}", "",
             "Inputs: the first 600 Kermany test JPEGs (224x224), repeated through hard links. "
             "*peak RSS*: largest resident size of the predict process or one decoding worker "
             "(ru_maxrss, as getrusage(RUSAGE_CHILDREN)); *tree RSS*: largest sampled sum over the process "
             "and its workers (shared pages counted per process); *tree PSS*: the same with shared pages split "
             "between the processes sharing them.", "",
             "| code | images | overlays | wall s | images/s | peak RSS MB | tree RSS MB | tree PSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    order = {"before": 0, "after": 1}
    for c in sorted(results["cases"], key=lambda c: (order.get(c["label"], 2), c["overlays"], c["images"])):
        lines.append(f"| {c['label']} ({c['commit']}) | {c['images']:,} | {'yes' if c['overlays'] else 'no'} | "
                     f"{c['wall_s']:.1f} | {c['images_per_s']:.0f} | {c['peak_rss_mb']:.0f} | "
                     f"{c['peak_tree_rss_mb']:.0f} | {_mb(c.get('peak_tree_pss_mb'))} |")
    return "\n".join(lines) + "\n" + results.get("notes", "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished run folder (score/evaluate done)")
    ap.add_argument("--run-note", default="", help="how the run was made (written into the .md)")
    ap.add_argument("--data", type=Path, help="data root [default: $CXRAD_DATA]")
    ap.add_argument("--sizes", type=int, nargs="+", default=[600, 6000, 60000])
    ap.add_argument("--overlays-sizes", type=int, nargs="*", default=[600], help="sizes also run with overlays")
    ap.add_argument("--label", default="after", help="before | after (the code version measured)")
    ap.add_argument("--code", type=Path, default=REPO, help="checkout whose cxrad package runs [default: this one]")
    ap.add_argument("--commit", default="", help="commit of --code when it is not a git checkout")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cxrad-predict-memory",
                    help="scratch folder for the inputs and outputs [default: %(default)s]")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for the .json/.md [default: %(default)s]")
    ap.add_argument("predict_args", nargs="*", help="after --: extra `cxrad predict` options (e.g. --chunk-size 64)")
    opt = ap.parse_args()
    tar = data_file(KERMANY_224, opt.data)
    base = base_images(tar, opt.work / "base")
    code = opt.code.resolve()
    path = opt.results / f"{STEM}.json"
    for n in opt.sizes:
        inputs = link_inputs(base, opt.work / f"inputs-{n}", n)
        for overlays in sorted({False, n in opt.overlays_sizes}):
            out = opt.work / f"out-{opt.label}-{n}-{int(overlays)}"
            shutil.rmtree(out, ignore_errors=True)
            case = {"label": opt.label, "commit": opt.commit or _commit(code), "overlays": overlays,
                    "predict_args": opt.predict_args, **run_predict(opt.run, inputs, out, overlays, code,
                                                                   opt.predict_args)}
            shutil.rmtree(out, ignore_errors=True)
            print(json.dumps(case), flush=True)
            # merge into the results file (other invocations may have added cases meanwhile)
            results = json.loads(path.read_text()) if path.is_file() else {"cases": []}
            results.update(host=socket.gethostname(), cpu=platform.processor() or platform.machine(),
                           usable_cpus=len(os.sched_getaffinity(0)), python=platform.python_version())
            if opt.run_note:
                results["run_note"] = opt.run_note
            results["cases"] = [c for c in results["cases"] if (c["label"], c["images"], c["overlays"])
                                != (case["label"], case["images"], case["overlays"])] + [case]
            opt.results.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=2) + "\n")
            (opt.results / f"{STEM}.md").write_text(render(results))
    print(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
