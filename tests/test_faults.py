"""Killed stages are recoverable without manual cleanup (issue 19, fault test).

Each test runs a stage in a subprocess on the 32-px sample, kills it with SIGKILL once it has
started writing — from outside, after polling for the file it writes, or from inside, just before
it renames a finished temporary file into place (``os.replace`` patched), which leaves that
temporary behind as a real kill would — then re-runs the stage the documented way (plain, or
``--resume`` for an interrupted training) and checks that it finishes with a valid artifact and that
no temporary file or ``.cxrad-partial`` marker is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrad.artifacts import read_manifest
from cxrad.layout import PARTIAL_MARKER, RunLayout

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
PREPARE = ["--labels", SAMPLE / "labels.csv", "--size", "32", "--workers", "2"]  # = the prepared_sample32 fixture
TRAIN = ["--module", "ndm", "--members", "2", "--epochs", "3", "--batch-size", "16", "--checkpoint-every", "1",
         "--device", "cpu"]
TRAIN_2_EPOCHS = [("2" if a == "3" else a) for a in TRAIN]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CXRAD_NO_PROGRESS": "1"}

# `cxrad ARGS` that SIGKILLs itself just before its N-th os.replace onto a path ending with SUFFIX
KILL_BEFORE_REPLACE = """
import os, signal, sys
suffix, n = sys.argv[1].rsplit(":", 1)
seen = [0]
real_replace = os.replace

def replace(src, dst, *args, **kwargs):
    if str(dst).endswith(suffix):
        seen[0] += 1
        if seen[0] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace
from cxrad.cli import main
main(["--no-progress", *sys.argv[2:]])
"""


def _killed_before_replace(suffix: str, n: int, *args) -> None:
    r = subprocess.run([sys.executable, "-c", KILL_BEFORE_REPLACE, f"{suffix}:{n}", *map(str, args)], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])


def _killed_when(path: Path, *args) -> None:
    """Start `cxrad ARGS` and SIGKILL it as soon as ``path`` exists."""
    proc = subprocess.Popen([sys.executable, "-m", "cxrad.cli", *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "finished before the kill"


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == PARTIAL_MARKER]


def _recovered(cli, folder: Path, kind: str, *args) -> None:
    code, out, err = cli(*args)
    assert code == 0, err
    read_manifest(folder, kind, verify=True)
    assert _leftovers(folder) == []


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the finished tiny run (its prepared input stays the shared one, unchanged)."""
    return Path(shutil.copytree(tiny_run["run"], tmp_path / "run"))


def test_prepare_killed_while_decoding(tmp_path, cli):
    out = tmp_path / "prepared"
    _killed_when(out / PARTIAL_MARKER, "--no-progress", "prepare", SAMPLE, "--out", out, *PREPARE)
    _recovered(cli, out, "prepared", "prepare", SAMPLE, "--out", out, *PREPARE)


def test_prepare_force_killed_while_writing_data(prepared_sample32, tmp_path, cli):
    out = Path(shutil.copytree(prepared_sample32, tmp_path / "prepared"))
    _killed_before_replace("/data.h5", 1, "prepare", SAMPLE, "--out", out, *PREPARE, "--force")
    assert not (out / "manifest.json").exists()
    assert [p.name for p in out.glob(".data.h5.*.tmp")], "the kill left no temporary: test the kill point"
    # a plain re-run: no --force, no manual cleanup
    _recovered(cli, out, "prepared", "prepare", SAMPLE, "--out", out, *PREPARE)


def test_train_ensemble_killed_while_writing_a_checkpoint(prepared_sample32, tmp_path, cli):
    run = tmp_path / "run"
    ckpt = RunLayout(run).member_checkpoint("ndm", 0)
    # killed as it renames member 0's checkpoint of epoch 2: that of epoch 1 stays, with a temporary beside it
    _killed_before_replace("/member-0.ckpt", 2, "train-ensemble", prepared_sample32, "--run", run, *TRAIN)
    assert ckpt.is_file() and list(ckpt.parent.glob(f".{ckpt.name}.*.tmp"))
    code, _, err = cli("train-ensemble", prepared_sample32, "--run", run, *TRAIN)
    assert code != 0 and "--resume" in err   # documented: an unfinished training is resumed, not restarted
    _recovered(cli, RunLayout(run).ensemble, "ensemble", "train-ensemble", prepared_sample32, "--run", run, *TRAIN,
               "--resume")
    assert not ckpt.exists()


def test_train_ensemble_killed_after_a_checkpoint(prepared_sample32, tmp_path, cli):
    run = tmp_path / "run"
    train = TRAIN_2_EPOCHS   # killed during the second epoch
    _killed_when(RunLayout(run).member_checkpoint("ndm", 1),
                 "--no-progress", "train-ensemble", prepared_sample32, "--run", run, *train)
    _recovered(cli, RunLayout(run).ensemble, "ensemble", "train-ensemble", prepared_sample32, "--run", run, *train,
               "--resume")


def test_refine_killed_while_writing_its_model(run_copy, cli):
    folder = RunLayout(run_copy).refine("intra")
    args = ("refine", run_copy, "--inputs", "intra", "--epochs", "1")
    # killed as it renames asr.pt, after the checkpoint of the last epoch: that stays, with asr.pt's temporary
    _killed_before_replace("/asr.pt", 1, *args, "--force")
    assert (folder / "checkpoint.ckpt").is_file() and list(folder.glob(".asr.pt.*.tmp"))
    assert not (folder / "manifest.json").exists()
    _recovered(cli, folder, "refine", *args, "--resume")


def test_refine_killed_before_its_first_checkpoint(run_copy, cli):
    folder = RunLayout(run_copy).refine("intra")
    args = ("refine", run_copy, "--inputs", "intra", "--epochs", "1")
    _killed_before_replace("/checkpoint.ckpt", 1, *args, "--force")
    assert not (folder / "checkpoint.ckpt").exists() and list(folder.glob(".checkpoint.ckpt.*.tmp"))
    _recovered(cli, folder, "refine", *args)   # nothing to resume: a plain run starts over


def test_score_killed_between_two_maps_files(run_copy, cli):
    maps = RunLayout(run_copy).maps
    _killed_before_replace(".h5", 2, "score", run_copy, "--force")
    assert not (maps / "manifest.json").exists() and list(maps.glob(".*.h5.*.tmp"))
    _recovered(cli, maps, "maps", "score", run_copy)


def test_stale_temporaries_are_those_of_dead_processes(tmp_path):
    from cxrad.artifacts import remove_stale_temporaries

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(done.stdout), os.getppid()
    names = [f".member-0.ckpt.{dead}.tmp", f".member-1.ckpt.{dead}.tmp", f".member-0.ckpt.{alive}.tmp",
             "member-0.ckpt", ".member-0.ckpt.tmp", f".cxrad-lock.{dead}"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path, ["member-0.ckpt"])
    assert [p.name for p in removed] == [f".member-0.ckpt.{dead}.tmp"]
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [f".member-1.ckpt.{dead}.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
