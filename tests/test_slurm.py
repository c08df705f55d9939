"""workflows/slurm/submit.sh against a stub `sbatch` that records the calls and runs each job here."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STUB_SBATCH = r'''#!{python}
"""Stub sbatch: record the call, then run the script now (dependencies are met by order)."""
import json, os, subprocess, sys
args = sys.argv[1:]
state = os.environ["STUB_STATE"]
calls = json.load(open(state)) if os.path.exists(state) else []
job_id = 1000 + len(calls)
opts, script = {{}}, None
i = 0
while i < len(args):
    a = args[i]
    if a.startswith("--") and "=" in a:
        k, v = a[2:].split("=", 1); opts[k] = v
    elif a in ("--export", "--chdir"):
        opts[a[2:]] = args[i + 1]; i += 1
    elif a.startswith("--"):
        opts[a[2:]] = True
    else:
        script = a
    i += 1
calls.append({{"args": args, "script": script, "job_id": job_id}})
json.dump(calls, open(state, "w"))
env = dict(os.environ)
for item in opts.get("export", "ALL").split(",")[1:]:
    k, v = item.split("=", 1); env[k] = v
tasks = [None]
if "array" in opts:
    lo, hi = map(int, opts["array"].split("-")); tasks = list(range(lo, hi + 1))
for t in tasks:
    e = dict(env, SLURM_JOB_ID=str(job_id), SLURM_JOB_NAME=os.path.basename(script))
    if t is not None:
        e.update(SLURM_ARRAY_JOB_ID=str(job_id), SLURM_ARRAY_TASK_ID=str(t))
    log = os.path.join(opts.get("chdir") or ".", f"slurm-{{job_id}}_{{t}}.out")
    with open(log, "w") as out:  # like sbatch --output: job output never reaches our stdout
        r = subprocess.run(["bash", script], cwd=opts.get("chdir"), env=e, stdout=out, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        print(f"stub sbatch: {{script}} task {{t}} failed ({{r.returncode}}):\n" + open(log).read(), file=sys.stderr)
        sys.exit(1)
print(job_id)
'''


def test_submit_chain_runs_to_completion(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "sbatch"
    stub.write_text(STUB_SBATCH.format(python=sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    config = tmp_path / "tiny.toml"
    config.write_text(textwrap.dedent(f"""
        [data]
        source = "{REPO / 'sample_data'}"
        labels = "{REPO / 'sample_data' / 'labels.csv'}"
        name = "sample32"
        [run]
        name = "slurm-test"
        refine_inputs = ["dual"]
        [prepare]
        size = 32
        [ensemble]
        members = 2
        epochs = 2
        batch_size = 16
        [synthesize]
        epochs = 2
        [refine]
        epochs = 1
    """))
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               STUB_STATE=str(tmp_path / "calls.json"), CXRAD_BIN=f"{sys.executable} -m cxrad.cli",
               CXRAD_NO_PROGRESS="1")
    env.pop("CXRAD_HOME", None)
    work = tmp_path / "work"
    r = subprocess.run(["bash", str(REPO / "workflows/slurm/submit.sh"), str(config), str(work)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = json.load(open(tmp_path / "calls.json"))
    assert [Path(c["script"]).name for c in calls] == [
        "prepare.sbatch", "train_ensemble.sbatch", "refine.sbatch", "evaluate.sbatch"]
    assert "--array=0-3" in calls[1]["args"]  # 2 modules x K=2 members
    for prev, call in zip(calls, calls[1:]):
        assert f"--dependency=afterok:{prev['job_id']}" in call["args"]
    run = work / "runs" / "slurm-test"
    assert f"run folder: {run}" in r.stdout
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics
    ens = json.loads((run / "ensemble" / "manifest.json").read_text())
    assert ens["kind"] == "ensemble"
    # every array task recorded its scheduler ids in its own member record
    assert "SLURM_ARRAY_TASK_ID" in json.dumps(ens) or any(
        "SLURM_ARRAY_TASK_ID" in p.read_text() for p in (run / "ensemble").rglob("*.json"))
