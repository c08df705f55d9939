"""Concurrent use of one workdir (issue 19): one writer per output folder (cxrad/locks.py).

A second process that wants to write a folder another process is writing is refused at once, in
one line naming the folder and the holder (host, pid), exit code 75, before it deletes anything;
with CXRAD_LOCK_WAIT it waits instead. A lock dies with its process. SLURM array tasks training
different members of one run still train at the same time. Two `cxrad run` on one workdir end with
one finished run, and every stage command with the same options then agrees that it is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SAMPLE, tiny_config

from cxrad import locks
from cxrad.errors import CxradError

ENV = {**os.environ, "CXRAD_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
ENV.pop(locks.WAIT_ENV, None)
HOLDER = """
import sys, time
from cxrad import locks
locks.acquire(sys.argv[1], sys.argv[2])
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


@contextlib.contextmanager
def held_elsewhere(path: Path, what: str = "written", seconds: float = 300):
    """Another process holding the lock of ``path`` (killed at the end, or after ``seconds``)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), what, str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _cxrad(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cxrad.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or ENV)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(locks.LOCK_SUFFIX)}


def _refusal(code: int, err: str, folder: Path, holder: int) -> str:
    """One line naming the folder and the holder's host and pid, exit code 75, no traceback."""
    assert code == locks.EXIT_BUSY, (code, err)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("cxrad: error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert f"{folder}: being " in errors[0] and f"pid {holder} on {socket.gethostname()}" in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    return run


# ---------------------------------------------------------------------------------------------
# the lock itself
# ---------------------------------------------------------------------------------------------
def test_lock_records_its_holder_refuses_others_and_dies_with_it(tmp_path):
    folder = tmp_path / "out"
    with held_elsewhere(folder) as holder:
        record = json.loads(locks.lock_file(folder).read_text())
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        with pytest.raises(CxradError) as info:
            locks.acquire(folder)
        assert info.value.exit_code == locks.EXIT_BUSY
        assert f"{folder}: being written by another cxrad process (pid {holder.pid} on {socket.gethostname()}" \
            in str(info.value)
        holder.kill()   # kill -9: no stale lock is left behind
        holder.wait()
        assert locks.acquire(folder)
    try:
        assert json.loads(locks.lock_file(folder).read_text())["pid"] == os.getpid()
    finally:
        locks.release(folder)
    assert locks.lock_file(folder).read_text() == ""   # released: no holder recorded


def test_waits_for_the_holder_with_cxrad_lock_wait(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    monkeypatch.setenv(locks.WAIT_ENV, "60")
    with held_elsewhere(folder, seconds=1.5):
        t0 = time.monotonic()
        with locks.holding(folder):
            waited = time.monotonic() - t0
    assert 0.5 < waited < 30


def test_bad_cxrad_lock_wait_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(locks.WAIT_ENV, "soon")
    with held_elsewhere(tmp_path / "out"), pytest.raises(CxradError, match="CXRAD_LOCK_WAIT=soon: not a number"):
        locks.acquire(tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# stages refuse a folder another process writes, before deleting anything
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage, folder", [("score", "maps"), ("evaluate", "eval"), ("synthesize", "synth"),
                                           ("refine", "refine/dual")])
def test_stage_refuses_folder_being_written_and_keeps_it(cli, run_copy, stage, folder):
    options = {"synthesize": ["--epochs", "2"], "refine": ["--epochs", "1"]}.get(stage, [])
    before = _snapshot(run_copy)
    with held_elsewhere(run_copy / folder) as holder:
        code, _, err = cli(stage, run_copy, *options, "--force")
        _refusal(code, err, run_copy / folder, holder.pid)
        if stage == "refine":   # --resume takes the same lock
            code, _, err = cli(stage, run_copy, *options, "--resume")
            _refusal(code, err, run_copy / folder, holder.pid)
    assert (run_copy / folder / "manifest.json").is_file()
    assert _snapshot(run_copy) == before


def test_train_ensemble_refuses_a_member_another_process_trains(cli, run_copy, tiny_run):
    args = ["train-ensemble", tiny_run["prepared"], "--run", run_copy, "--members", "2", "--epochs", "2",
            "--batch-size", "16", "--device", "cpu"]
    before = _snapshot(run_copy)
    member = run_copy / "ensemble" / "ndm" / "member-0"
    with held_elsewhere(member, "trained") as holder:
        code, _, err = cli(*args, "--member", "0", "--force")
        assert "being trained by" in _refusal(code, err, member, holder.pid)
        assert _snapshot(run_copy) == before      # --force deleted nothing
        code, _, err = cli(*args)                 # the finished run: nothing to train, but member 0 is busy
        _refusal(code, err, member, holder.pid)
        code, _, err = cli(*args, "--member", "1", "--force")   # another member trains meanwhile
        assert code == 0, err
    after = _snapshot(run_copy)
    for module in ("ndm", "udm"):
        assert after[f"ensemble/{module}/member-0.pt"] == before[f"ensemble/{module}/member-0.pt"]
        assert after[f"ensemble/{module}/member-1.pt"] != before[f"ensemble/{module}/member-1.pt"]
    assert json.loads((run_copy / "ensemble" / "manifest.json").read_text())["kind"] == "ensemble"


def test_run_refuses_prepared_data_being_prepared(tmp_path):
    config = tiny_config(tmp_path, "blocked")
    work = tmp_path / "work"
    prepared = work / "prepared" / "sample32"
    with held_elsewhere(prepared) as holder:
        proc = _cxrad("run", config, "--workdir", work)
        _, err = proc.communicate(timeout=300)
        _refusal(proc.returncode, err, prepared, holder.pid)
    assert not prepared.exists() and not (work / "runs").exists()


def test_array_tasks_of_one_run_train_side_by_side(prepared_sample32, tmp_path):
    """Two processes training different members of a new run (SLURM array tasks) both create or join
    the run and the last one writes the ensemble manifest; neither waits for the other's training."""
    run = tmp_path / "run"
    args = ["train-ensemble", prepared_sample32, "--run", run, "--members", "2", "--epochs", "1",
            "--batch-size", "16", "--device", "cpu"]
    procs = [_cxrad(*args, "--member", str(i)) for i in (0, 1)]
    for p in procs:
        err = p.communicate(timeout=600)[1]
        assert p.returncode == 0, err
    manifest = json.loads((run / "ensemble" / "manifest.json").read_text())
    assert manifest["kind"] == "ensemble" and len(manifest["outputs"]) == 4
    code = subprocess.run([sys.executable, "-m", "cxrad.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True).returncode
    assert code == 0


# ---------------------------------------------------------------------------------------------
# two `cxrad run` on one workdir
# ---------------------------------------------------------------------------------------------
def test_two_runs_on_one_workdir_end_consistent(cli, tmp_path):
    config = tiny_config(tmp_path, "twice", epochs=2)
    work = tmp_path / "work"
    procs = [_cxrad("run", config, "--workdir", work) for _ in range(2)]
    outcomes = [(p.communicate(timeout=900)[1], p) for p in procs]
    outcomes = [(p.returncode, err, p.pid) for err, p in outcomes]
    for code, err, _ in outcomes:
        assert "Traceback" not in err, err
    assert sorted(code for code, _, _ in outcomes) in ([0, 0], [0, locks.EXIT_BUSY]), outcomes
    for (code, err, _), (_, _, other) in zip(outcomes, outcomes[::-1]):
        if code:   # the refused one names the other process
            line = err.strip().splitlines()[-1]
            assert line.startswith("cxrad: error: ") and f"(pid {other} on {socket.gethostname()}" in line, err
    run, prepared = work / "runs" / "twice", work / "prepared" / "sample32"
    _all_stages_agree_they_are_done(cli, config, work, run, prepared)
    _dry_run_agrees_when_not_done(cli, config, work, run, prepared)


def _all_stages_agree_they_are_done(cli, config: Path, work: Path, run: Path, prepared: Path) -> None:
    """`cxrad run --dry-run` skips every step, and every stage command with the TOML's options is a
    no-op that changes no file."""
    code, out, err = cli("run", config, "--workdir", work, "--dry-run", "--json")
    assert code == 0, err
    assert [s["action"] for s in json.loads(out)["steps"]] == ["skip"] * 7
    before = {**_snapshot(run), **{f"prepared/{k}": v for k, v in _snapshot(prepared).items()}}
    commands = [
        ["prepare", SAMPLE, "--out", prepared, "--labels", SAMPLE / "labels.csv", "--size", "32"],
        ["train-ensemble", prepared, "--run", run, "--members", "2", "--epochs", "2", "--batch-size", "16"],
        ["synthesize", run, "--epochs", "2"],
        ["refine", run, "--inputs", "dual", "--epochs", "1"],
        ["refine", run, "--inputs", "intra", "--epochs", "1"],
        ["score", run],
        ["evaluate", run],
    ]
    for args in commands:
        code, _, err = cli(*args)
        assert code == 0, (args, err)
    after = {**_snapshot(run), **{f"prepared/{k}": v for k, v in _snapshot(prepared).items()}}
    assert after == before


def _dry_run_agrees_when_not_done(cli, config: Path, work: Path, run: Path, prepared: Path) -> None:
    """A step whose output was made with another configuration, or from data prepared again, is not
    "skip" in the plan (its stage would refuse it), and the steps after it are checked again."""
    edited = config.with_name("edited.toml")
    edited.write_text(config.read_text().replace("[synthesize]\nepochs = 2", "[synthesize]\nepochs = 3"))
    code, out, err = cli("run", edited, "--workdir", work, "--dry-run", "--json")
    steps = {s["name"]: s for s in json.loads(out)["steps"]}
    assert steps["train-ensemble"]["action"] == "skip" and steps["synthesize"]["action"] == "run", steps
    assert "another configuration" in steps["synthesize"]["reason"]
    assert all(steps[name]["action"] == "run" for name in ("refine (dual)", "score", "evaluate")), steps
    code, _, err = cli("run", edited, "--workdir", work)
    assert code == 2 and f"{run / 'synth'}: already holds a synth artifact made with a different configuration" \
        in err, err
    code, _, err = cli("prepare", SAMPLE, "--out", prepared, "--labels", SAMPLE / "labels.csv", "--size", "32",
                       "--force")
    assert code == 0, err
    code, out, err = cli("run", config, "--workdir", work, "--dry-run", "--json")
    steps = {s["name"]: s for s in json.loads(out)["steps"]}
    assert steps["prepare"]["action"] == "skip" and steps["train-ensemble"]["action"] == "run", steps
    code, _, err = cli("train-ensemble", prepared, "--run", run, "--members", "2", "--epochs", "2", "--batch-size",
                       "16")
    assert code == 2 and "as it was before it was prepared again" in err, err


def test_run_on_data_prepared_again_says_so(cli, prepared_sample32, tmp_path):
    """Data prepared again under a run (what two concurrent `cxrad run` used to do) is named as such,
    not as "a different configuration"."""
    prepared, run = tmp_path / "prepared", tmp_path / "run"
    shutil.copytree(prepared_sample32, prepared)
    train = ["train-ensemble", prepared, "--run", run, "--module", "ndm", "--members", "2", "--epochs", "1",
             "--batch-size", "16", "--device", "cpu"]
    code, _, err = cli(*train)
    assert code == 0, err
    code, _, err = cli("prepare", SAMPLE, "--out", prepared, "--labels", SAMPLE / "labels.csv", "--size", "32",
                       "--workers", "2", "--force")
    assert code == 0, err
    code, _, err = cli(*train)
    assert code == 2 and f"trained on {prepared.resolve()} as it was before it was prepared again" in err, err
