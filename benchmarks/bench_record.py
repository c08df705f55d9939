"""What every benchmark record carries besides its numbers: commit, peak memory, intervals in percent.

Shared by the scripts in benchmarks/ (they run with benchmarks/ as the script folder, so
``from bench_record import ...`` finds this module).
"""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _checkout_commit() -> str:
    """Short commit hash of the checkout, "-dirty" when its code differs from it ("unknown" outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        # the code only: results files that earlier runs appended to do not make a checkout dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "cxrad",
                                "benchmarks/*.py", "pyproject.toml"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


# Read once, when a benchmark starts: a run lasts hours, and commits made meanwhile are not the code it runs.
_COMMIT_AT_START = _checkout_commit()


def git_commit() -> str:
    """The commit the running benchmark started from (see _checkout_commit)."""
    return _COMMIT_AT_START


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def percent(interval):
    """[lo, hi] in percent, or None when evaluate reports no interval."""
    try:
        return [round(100 * float(v), 2) for v in interval]
    except (TypeError, ValueError):
        return None


def append_jsonl(path: Path, record: dict) -> None:
    """One JSON line at the end of ``path`` (its folder created when needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
