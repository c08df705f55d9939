"""`cxrad run`: the chain, skipping finished stages, resuming a killed one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import SAMPLE, tiny_config

from cxrad.pipeline import load_config


def cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "cxrad.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, **kw)


def test_pipeline_writes_every_artifact(tiny_run):
    run = tiny_run["run"]
    for kind, folder in [("ensemble", run / "ensemble"), ("synth", run / "synth"), ("refine", run / "refine/dual"),
                         ("refine", run / "refine/intra"), ("maps", run / "maps"), ("eval", run / "eval")]:
        assert json.loads((folder / "manifest.json").read_text())["kind"] == kind
    metrics = tiny_run["result"]["metrics"]
    assert set(metrics["scores"]) == {"A_rec", "A_intra", "A_inter", "R_intra", "R_dual"}
    for plot in ("roc.png", "pr.png", "histograms.png", "overlays.png"):
        assert (run / "eval" / plot).stat().st_size > 1000
    assert [s["action"] for s in tiny_run["result"]["steps"]] == ["run"] * 7


def test_second_run_does_nothing_and_says_so(tiny_run):
    before = {p: p.stat().st_mtime_ns for p in tiny_run["run"].rglob("*") if p.is_file()}
    r = cli("run", tiny_run["config"], "--workdir", tiny_run["workdir"])
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stderr
    assert r.stderr.count("[skip]") == 7
    assert "R_dual" in r.stdout and f"run: {tiny_run['run']}" in r.stdout
    after = {p: p.stat().st_mtime_ns for p in tiny_run["run"].rglob("*") if p.is_file()}
    assert after == before


def test_dry_run_lists_and_runs_nothing(tmp_path):
    config = tiny_config(tmp_path)
    r = cli("run", config, "--workdir", tmp_path / "w", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("no output yet") == 7
    assert not (tmp_path / "w").exists()


def test_kill_during_training_then_resume(tmp_path):
    config = tiny_config(tmp_path, run_name="killed", epochs=20)
    work = tmp_path / "w"
    env = dict(os.environ, CXRAD_NO_PROGRESS="1")
    proc = subprocess.Popen([sys.executable, "-m", "cxrad.cli", "run", str(config), "--workdir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    ens = work / "runs" / "killed" / "ensemble"
    deadline = time.monotonic() + 120
    while not any(ens.glob("*/member-*.ckpt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (ens / "manifest.json").exists()
    r = cli("run", config, "--workdir", work, "--dry-run")
    assert "resume" in r.stdout.splitlines()[1]
    r = cli("run", config, "--workdir", work, env=env)
    assert r.returncode == 0, r.stderr
    assert "[resume] train-ensemble" in r.stderr
    assert json.loads((ens / "manifest.json").read_text())["kind"] == "ensemble"
    assert (work / "runs" / "killed" / "eval" / "metrics.json").is_file()


def test_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nsource = "x"\n[ensemble]\nepoch = 3\n')
    r = cli("run", bad, "--workdir", tmp_path / "w")
    assert r.returncode == 2 and "unknown EnsembleConfig option(s) epoch" in r.stderr
    assert r.stderr.count("\n") == 1
    r = cli("run", tmp_path / "missing.toml")
    assert r.returncode == 2 and "no such config file" in r.stderr


def test_embedded_default_points_at_sample_data():
    cfg = load_config(None)
    assert cfg.source == SAMPLE.resolve() and cfg.labels == (SAMPLE / "labels.csv").resolve()
    assert cfg.method == "ddad"
    assert cfg.method_tables["ensemble"].members == 3 and cfg.method_tables["refine_inputs"] == ["dual", "intra"]
