"""workflows/slurm/ on a real one-node SLURM cluster, started here as root; a stub `sbatch` only where
SLURM cannot run (not installed, or not root) or when CXRAD_TEST_SLURM_STUB=1 asks for it.

The cluster is private to the test: its own munged (own key and socket), slurmctld and slurmd on free
ports, all state under a temporary folder, torn down at the end. The node offers what the batch
scripts ask for (CPUs, memory, `gpu` GRES backed by /dev/null), so the scripts run exactly as written.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "workflows" / "slurm"
SAMPLE = REPO / "sample_data"
SCORES = {"A_rec", "A_intra", "A_inter", "R_dual"}  # the run's maps + ASR-Net on dual inputs
K = 2  # members per module
NODE = "cxradnode"


def _real_slurm_unavailable() -> str | None:
    if os.environ.get("CXRAD_TEST_SLURM_STUB"):
        return "CXRAD_TEST_SLURM_STUB is set: the stub sbatch stands in for SLURM"
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
               if shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
    if missing:
        return (f"real SLURM not installed ({', '.join(missing)} missing): "
                "apt-get install slurm-wlm munge (.ci/run does)")
    if os.geteuid() != 0:
        return "starting munged/slurmctld/slurmd for a private cluster needs root"
    return None


NO_REAL_SLURM = _real_slurm_unavailable()


def _config(path: Path, run_name: str, *, module: str = "both", epochs: int = 2) -> Path:
    path.write_text(textwrap.dedent(f"""
        [data]
        source = "{SAMPLE}"
        labels = "{SAMPLE / 'labels.csv'}"
        name = "sample32"
        [run]
        name = "{run_name}"
        refine_inputs = ["dual"]
        [prepare]
        size = 32
        [ensemble]
        module = "{module}"
        members = {K}
        epochs = {epochs}
        batch_size = 16
        [synthesize]
        epochs = 2
        [refine]
        epochs = 1
    """))
    return path


def _cxrad_env(**extra: str) -> dict[str, str]:
    """The submitting user's environment: the `cxrad` console script of this interpreter on PATH."""
    bindir = Path(sys.executable).parent
    # One torch thread per process: concurrent array tasks on a small machine would otherwise spin.
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", CXRAD_NO_PROGRESS="1",
               OMP_NUM_THREADS="1", **extra)
    env.pop("CXRAD_HOME", None)
    if not (bindir / "cxrad").is_file():  # not installed as a script: run the module
        env["CXRAD_BIN"] = f"{sys.executable} -m cxrad.cli"
    return env


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _created(manifest: dict) -> datetime:
    return datetime.strptime(manifest["created"], "%Y-%m-%dT%H:%M:%S%z")


def _check_run(work: Path, run: Path, ids: dict[str, str], array_task_job_ids: set[str], node: str) -> None:
    """What a finished chain must have left, whichever scheduler ran it.

    ``ids``: the job ids submit.sh printed (prepare, ensemble = the array job, refine, evaluate);
    ``array_task_job_ids``: the SLURM_JOB_ID of each of the 2K array tasks.
    """
    # Every artifact records the job that wrote it; stages were written in dependency order.
    slurm = {}
    order = [("prepare", work / "prepared" / "sample32"), ("run", run), ("ensemble", run / "ensemble"),
             ("synthesize", run / "synth"), ("refine", run / "refine" / "dual"), ("score", run / "maps"),
             ("evaluate", run / "eval")]
    manifests = {name: _manifest(folder) for name, folder in order}
    for name, m in manifests.items():
        slurm[name] = m["runtime"]["slurm"]
        assert slurm[name]["SLURM_NODELIST"] == node, (name, slurm[name])
    assert slurm["prepare"]["SLURM_JOB_ID"] == ids["prepare"]
    for name in ("run", "ensemble"):  # written by the first / the last array task to finish
        assert slurm[name]["SLURM_ARRAY_JOB_ID"] == ids["ensemble"], slurm[name]
        assert slurm[name]["SLURM_ARRAY_TASK_ID"] in {str(t) for t in range(2 * K)}, slurm[name]
        assert slurm[name]["SLURM_JOB_ID"] in array_task_job_ids, slurm[name]
    for name, job in (("synthesize", "refine"), ("refine", "refine"), ("score", "evaluate"), ("evaluate", "evaluate")):
        assert slurm[name]["SLURM_JOB_ID"] == ids[job], (name, slurm[name])
        assert "SLURM_ARRAY_TASK_ID" not in slurm[name]
    times = [_created(m) for m in manifests.values()]
    assert times == sorted(times), list(zip(manifests, times))

    # One array task per (module, member): each member was trained alone, by its own process.
    ens = manifests["ensemble"]
    assert sorted(ens["outputs"]) == sorted(f"{m}/member-{i}.pt" for m in ("ndm", "udm") for i in range(K))
    for module in ("ndm", "udm"):
        for i in range(K):
            info = json.loads((run / "ensemble" / module / f"member-{i}.json").read_text())
            assert (info["module"], info["member"], info["epochs"]) == (module, i, 2)
            assert info["trained_with"] == 1, info  # trained in one process with all K: 2

    # The metrics are those of the test split of labels.csv, and agree with the per-image scores.
    with open(SAMPLE / "labels.csv", newline="") as fh:
        test_labels = [int(r["label"]) for r in csv.DictReader(fh) if r["split"] == "test"]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert (metrics["n_normal"], metrics["n_abnormal"]) == (test_labels.count(0), test_labels.count(1))
    assert set(metrics["scores"]) == SCORES
    assert metrics["decision_score"] == "R_dual"
    with open(run / "eval" / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(test_labels)
    labels = [int(r["label"]) for r in rows]
    for name, values in metrics["scores"].items():
        assert 0.0 <= values["auc"] <= 1.0 and 0.0 <= values["ap"] <= 1.0, (name, values)
        scores = [float(r[name]) for r in rows]
        assert values["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9), name
        assert values["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9), name


SUBMITTED = re.compile(
    r"submitted: prepare (\d+), train-ensemble (\d+) \(array 0-(\d+)\), refine (\d+), evaluate (\d+)")


def _submit(config: Path, run_name: str, work: Path, env: dict[str, str]) -> tuple[dict[str, str], Path]:
    r = subprocess.run(["bash", str(SLURM_DIR / "submit.sh"), str(config), str(work)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    m = SUBMITTED.search(r.stdout)
    assert m, r.stdout
    assert int(m.group(3)) == 2 * K - 1  # 2 modules x K members
    run = work / "runs" / run_name
    assert f"run folder: {run}\n" in r.stdout, r.stdout
    return dict(zip(("prepare", "ensemble", "refine", "evaluate"), m.group(1, 2, 4, 5))), run


# ---------------------------------------------------------------------------------------------
# a real cluster
# ---------------------------------------------------------------------------------------------
@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # what clients (sbatch, squeue, ...) and jobs need: SLURM_CONF

    def cmd(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60)
        if check:
            assert r.returncode == 0, f"{' '.join(args)}: {r.stdout}{r.stderr}"
        return r.stdout

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job` records of a job (one per task for an array job)."""
        out = self.cmd("scontrol", "show", "job", "--oneliner", job_id)
        return [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in out.splitlines() if line]

    def wait_until_gone(self, job_ids: list[str], timeout: float, logs: Path) -> None:
        """Until the jobs left the queue; fails at once when one failed and holds up the others."""
        deadline = time.monotonic() + timeout
        while queued := self.cmd("squeue", "--noheader", "--format=%i %T %r", "--jobs", ",".join(job_ids),
                                 check=False).strip():
            stuck = "DependencyNeverSatisfied" in queued
            if stuck or time.monotonic() > deadline:
                why = "a job failed" if stuck else f"jobs still queued after {timeout:.0f} s"
                pytest.fail(f"{why}:\n{queued}\n" + self.cmd("scontrol", "show", "job", check=False) + self.logs(logs))
            time.sleep(0.5)

    def logs(self, *folders: Path) -> str:
        return "".join(f"\n--- {p}\n{p.read_text(errors='replace')[-3000:]}"
                       for d in (*folders, self.root / "log") for p in sorted(d.glob("*.log")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=cxradtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={root}/munge/socket,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=3600
# The node declares what the batch scripts request, whatever this machine has.
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs=16 RealMemory=65536 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if NO_REAL_SLURM:
        pytest.skip(NO_REAL_SLURM)
    started = time.monotonic()
    root = tmp_path_factory.mktemp("slurm")
    for d in ("munge", "state", "spool", "log", "gpu"):
        (root / d).mkdir()
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    for i in range(4):  # GRES needs device files; the jobs never open them
        (root / "gpu" / f"gpu{i}").symlink_to("/dev/null")
    (root / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File={root}/gpu/gpu[0-3]\n")
    host = socket.gethostname().split(".")[0]
    (root / "slurm.conf").write_text(SLURM_CONF.format(
        host=host, node=NODE, root=root, ctld_port=_free_port(), slurmd_port=_free_port()))
    env = _cxrad_env(SLURM_CONF=str(root / "slurm.conf"))
    env["PATH"] += ":/usr/sbin:/sbin"
    cluster = Cluster(root, env)

    daemons: list[subprocess.Popen] = []

    def start(*args: str) -> None:
        out = open(root / "log" / f"{Path(args[0]).name}.stdout.log", "w")
        daemons.append(subprocess.Popen(list(args), env=env, stdout=out, stderr=subprocess.STDOUT))

    try:
        start("munged", "--foreground", "--force", f"--key-file={key}", f"--socket={root}/munge/socket",
              f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/log/munged.log",
              f"--seed-file={root}/munge/seed")
        deadline = time.monotonic() + 10
        while not (root / "munge" / "socket").exists():
            assert daemons[0].poll() is None and time.monotonic() < deadline, "munged did not start" + cluster.logs()
            time.sleep(0.05)
        start("slurmctld", "-D", "-f", str(root / "slurm.conf"))
        start("slurmd", "-D", "-N", NODE, "-f", str(root / "slurm.conf"))
        deadline = time.monotonic() + 30
        while cluster.cmd("sinfo", "--noheader", "--Node", "--format=%t", check=False).strip() != "idle":
            dead = [p.args[0] for p in daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                pytest.fail(f"the SLURM node did not become idle (exited: {dead}):\n"
                            + cluster.cmd("sinfo", "--Node", "--long", check=False) + cluster.logs())
            time.sleep(0.2)
        print(f"SLURM cluster up in {time.monotonic() - started:.1f} s "
              f"({cluster.cmd('sinfo', '--version').strip()})")
        yield cluster
    finally:
        _stop(cluster, daemons)


def _stop(cluster: Cluster, daemons: list[subprocess.Popen]) -> None:
    """Cancel what is still queued (leave no job behind), then stop the daemons, newest first."""
    if daemons and daemons[-1].poll() is None:
        queued = cluster.cmd("squeue", "--noheader", "--format=%A", check=False).split()
        if queued:
            cluster.cmd("scancel", *queued, check=False)
            deadline = time.monotonic() + 15
            while cluster.cmd("squeue", "--noheader", check=False).strip() and time.monotonic() < deadline:
                time.sleep(0.2)
    for p in reversed(daemons):
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@dataclass
class Chain:
    work: Path
    run: Path
    ids: dict[str, str]
    seconds: float


@pytest.fixture(scope="module")
def chain(slurm_cluster, tmp_path_factory) -> Chain:
    """submit.sh's whole chain for a tiny config, run to the end on the cluster."""
    tmp = tmp_path_factory.mktemp("chain")
    config = _config(tmp / "slurm-test.toml", "slurm-test")
    work = tmp / "work"
    started = time.monotonic()
    ids, run = _submit(config, "slurm-test", work, slurm_cluster.env)
    slurm_cluster.wait_until_gone(list(ids.values()), timeout=400, logs=work)
    return Chain(work, run, ids, time.monotonic() - started)


def _time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S")


@pytest.mark.skipif(NO_REAL_SLURM is not None, reason=str(NO_REAL_SLURM))
def test_every_job_of_the_chain_completed_after_the_one_it_depends_on(slurm_cluster, chain):
    records = {stage: slurm_cluster.jobs(job_id) for stage, job_id in chain.ids.items()}
    for stage, recs in records.items():
        for rec in recs:
            assert (rec["JobState"], rec["ExitCode"]) == ("COMPLETED", "0:0"), (
                stage, rec, slurm_cluster.logs(chain.work))
            assert rec["NodeList"] == NODE
    ensemble = records["ensemble"]
    assert sorted(int(r["ArrayTaskId"]) for r in ensemble) == list(range(2 * K))
    assert len({r["JobId"] for r in ensemble}) == 2 * K  # separate jobs, one per task
    assert {r["ArrayJobId"] for r in ensemble} == {chain.ids["ensemble"]}
    stages = ["prepare", "ensemble", "refine", "evaluate"]
    for before, after in zip(stages, stages[1:]):
        ended = max(_time(r["EndTime"]) for r in records[before])
        assert all(_time(r["StartTime"]) >= ended for r in records[after]), (before, after, records)
    print(f"chain on SLURM: {chain.seconds:.0f} s")


@pytest.mark.skipif(NO_REAL_SLURM is not None, reason=str(NO_REAL_SLURM))
def test_each_array_task_trained_its_own_module_and_member(slurm_cluster, chain):
    array_id = chain.ids["ensemble"]
    for t in range(2 * K):
        module, i = ("ndm", "udm")[t // K], t % K
        log = (chain.work / f"cxrad-ensemble-{array_id}_{t}.log").read_text()
        assert f"(array {array_id} task {t})" in log, log
        trained = set(re.findall(r"\b(ndm|udm) \w+ members ([\d,]+):", log))
        assert trained == {(module, str(i))}, (t, log)


@pytest.mark.skipif(NO_REAL_SLURM is not None, reason=str(NO_REAL_SLURM))
def test_the_run_records_its_slurm_jobs_and_its_metrics(slurm_cluster, chain):
    tasks = {r["JobId"] for r in slurm_cluster.jobs(chain.ids["ensemble"])}
    _check_run(chain.work, chain.run, chain.ids, tasks, NODE)


@pytest.mark.skipif(NO_REAL_SLURM is not None, reason=str(NO_REAL_SLURM))
def test_walltime_signal_checkpoints_requeues_and_the_job_resumes(slurm_cluster, chain):
    """--signal=B:USR1@120 sends USR1 to the batch shell before the walltime (scancel --batch
    --signal does the same now): cxrad checkpoints, the job requeues itself, and its second start
    resumes from the checkpoint."""
    config = _config(chain.work.parent / "walltime-test.toml", "walltime-test", module="ndm", epochs=1000)
    run = chain.work / "runs" / "walltime-test"
    exports = f"ALL,CXRAD_CONFIG={config},CXRAD_WORKDIR={chain.work},CXRAD_RUN={run},CXRAD_SLURM_DIR={SLURM_DIR}"
    job = slurm_cluster.cmd("sbatch", "--parsable", "--chdir", str(chain.work), "--export", exports,
                            str(SLURM_DIR / "train_ensemble.sbatch")).strip()
    log = run / "ensemble" / "log.jsonl"
    job_log = chain.work / f"cxrad-ensemble-{job}_4294967294.log"  # %A_%a of a job that is no array

    def events() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []

    def wait_for(what, timeout: float):
        deadline = time.monotonic() + timeout
        while not (found := what()):
            assert time.monotonic() < deadline, f"timed out: {what.__doc__}\n" + slurm_cluster.logs(chain.work)
            time.sleep(0.2)
        return found

    def first_epoch():
        """an epoch trained"""
        return [e for e in events() if "loss" in e]

    wait_for(first_epoch, 120)
    slurm_cluster.cmd("scancel", "--batch", "--signal=USR1", job)

    def resumed():
        """the requeued job resumed"""
        return [e for e in events() if e.get("event") == "resumed"]

    event = wait_for(resumed, 120)[0]
    rec = slurm_cluster.jobs(job)[0]
    slurm_cluster.cmd("scancel", job)
    assert rec["Restarts"] == "1" and rec["JobState"] == "RUNNING", rec
    text = job_log.read_text()  # --open-mode=append: both starts of the job are in its log
    stopped = re.search(r"training stopped by SIGUSR1 after epoch (\d+); checkpoint saved", text)
    assert "walltime signal: checkpointing and requeueing" in text and stopped, text
    assert (event["module"], event["members"], event["epoch"]) == ("ndm", list(range(K)), int(stopped.group(1)))
    assert f"resuming ndm member(s) {list(range(K))} at epoch {stopped.group(1)}" in text
    # no epoch was lost or trained twice: those after the resume continue from the checkpoint
    trained = [e["epoch"] for e in events() if e.get("member") == 0]
    assert trained == list(range(1, len(trained) + 1)) and len(trained) >= int(stopped.group(1)), trained
    slurm_cluster.wait_until_gone([job], timeout=60, logs=chain.work)


# ---------------------------------------------------------------------------------------------
# the stub, where SLURM cannot run
# ---------------------------------------------------------------------------------------------
STUB_SBATCH = r'''#!{python}
"""Stub sbatch: record the call, then run the script now (dependencies are met by order).
Job ids as SLURM gives them: every array task is a job of its own; the array job's id is printed."""
import json, os, subprocess, sys
args = sys.argv[1:]
state = os.environ["STUB_STATE"]
calls = json.load(open(state)) if os.path.exists(state) else []
job_id = 1000 + sum(len(c["task_job_ids"]) for c in calls)
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
env = dict(os.environ)
for item in opts.get("export", "ALL").split(",")[1:]:
    k, v = item.split("=", 1); env[k] = v
tasks = [None]
if "array" in opts:
    lo, hi = map(int, opts["array"].split("-")); tasks = list(range(lo, hi + 1))
calls.append({{"args": args, "job_id": str(job_id), "task_job_ids": [str(job_id + k) for k in range(len(tasks))]}})
json.dump(calls, open(state, "w"))
for k, t in enumerate(tasks):
    e = dict(env, SLURM_JOB_ID=str(job_id + k), SLURM_JOB_NAME=os.path.basename(script), SLURM_NODELIST="stub")
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


@pytest.mark.skipif(NO_REAL_SLURM is None, reason="real SLURM runs here: the real-cluster tests cover submit.sh")
def test_submit_chain_against_a_stub_sbatch(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "sbatch"
    stub.write_text(STUB_SBATCH.format(python=sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    config = _config(tmp_path / "slurm-test.toml", "slurm-test")
    env = _cxrad_env(STUB_STATE=str(tmp_path / "calls.json"))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    work = tmp_path / "work"
    ids, run = _submit(config, "slurm-test", work, env)
    calls = json.load(open(tmp_path / "calls.json"))
    exports = (f"ALL,CXRAD_CONFIG={config},CXRAD_WORKDIR={work},CXRAD_RUN={run},CXRAD_SLURM_DIR={SLURM_DIR}")
    common = ["--parsable", "--chdir", str(work), "--export", exports]
    assert [c["args"] for c in calls] == [
        common + [str(SLURM_DIR / "prepare.sbatch")],
        common + [f"--dependency=afterok:{ids['prepare']}", f"--array=0-{2 * K - 1}",
                  str(SLURM_DIR / "train_ensemble.sbatch")],
        common + [f"--dependency=afterok:{ids['ensemble']}", str(SLURM_DIR / "refine.sbatch")],
        common + [f"--dependency=afterok:{ids['refine']}", str(SLURM_DIR / "evaluate.sbatch")],
    ]
    assert [c["job_id"] for c in calls] == list(ids.values())
    _check_run(work, run, ids, set(calls[1]["task_job_ids"]), "stub")
    for t in range(2 * K):
        log = (work / f"slurm-{ids['ensemble']}_{t}.out").read_text()
        assert f"(array {ids['ensemble']} task {t})" in log, log
