"""`cxrad train-ensemble`: K reconstruction networks on Dn (NDM) and K on Dn ∪ Du (UDM).

The stage validates everything (config, device, prepared data, the RUN folder) before it writes
anything, creates or joins the run (RUN/manifest.json), trains the requested (module, member)
jobs — members of one module that start from the same epoch train together as one batched model —
and writes RUN/ensemble/manifest.json once every member of the run is complete, whichever
process (SLURM array task) completes last. File layout: :class:`cxrad.layout.RunLayout`.
Locks (cxrad/locks.py): the run only while its manifest is checked or written and while the
ensemble manifest is written; each (module, member) while this process trains it, so array tasks
training different members never wait for each other and two processes never train one member.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrad import locks, progress
from cxrad.artifacts import (
    MANIFEST_NAME,
    input_record,
    load_torch,
    os_error,
    read_manifest,
    remove_stale_temporaries,
    runtime_info,
    save_torch_atomic,
    sha256_file,
    write_json_atomic,
    write_manifest,
)
from cxrad.config import identity, identity_digest, to_jsonable
from cxrad.devices import device_name, resolve_device
from cxrad.errors import CxradError
from cxrad.io.store import load_split, preprocessing_of, split_names
from cxrad.layout import DDAD_MODULES as MODULES
from cxrad.layout import RunLayout
from cxrad.methods.ddad import losses
from cxrad.methods.ddad.config import EnsembleConfig
from cxrad.methods.ddad.trainer import BoundTrainer, GroupTrainer
from cxrad.runs import check_run_folder
from cxrad.training_loop import Diverged, Interrupted, fit

METHOD = "ddad"
RUN_LOCK_WAIT_S = 300.0   # the run's lock is held for moments (checking or writing a manifest): always wait


def member_seed(base: int, module: str, i: int, *, paired: bool) -> int:
    """Deterministic, well-mixed seed of member i of a module (recorded in the manifests).

    The seed fixes the member's initial weights and its shuffling. ``paired``: member i gets the
    same seed in both modules (common random numbers), so init noise cancels in A_inter.
    """
    stream = 0 if paired else MODULES.index(module)
    return int(np.random.SeedSequence([int(base), stream, int(i)]).generate_state(1)[0])


def _modules(cfg: EnsembleConfig) -> list[str]:
    return list(MODULES) if cfg.module == "both" else [cfg.module]


def _jobs(cfg: EnsembleConfig, member: int | None) -> list[tuple[str, int]]:
    """(module, member) pairs this process trains: all, `--member i`, or its SLURM array task."""
    modules = _modules(cfg)
    if member is not None:
        if not 0 <= member < cfg.members:
            raise CxradError(f"--member {member}: must be in 0..{cfg.members - 1} (--members {cfg.members}).")
        return [(m, member) for m in modules]
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is not None:
        count = len(modules) * cfg.members
        if not task.isdigit() or int(task) >= count:
            raise CxradError(
                f"SLURM_ARRAY_TASK_ID={task}: this run has {count} (module, member) tasks; submit with "
                f"--array=0-{count - 1}."
            )
        t = int(task)
        return [(modules[t // cfg.members], t % cfg.members)]
    return [(m, i) for m in modules for i in range(cfg.members)]


def _load_data(prepared: Path, modules: list[str], batch_size: int,
               depth: int) -> tuple[dict[str, np.ndarray], int]:
    """Training images per module, (N, s, s) float32 in [0, 1], and the side s."""
    read_manifest(prepared, "prepared")
    have = split_names(prepared)
    if "normal" not in have or len(normal := load_split(prepared, "normal")) == 0:
        raise CxradError(
            f"{prepared}: the prepared data has no images in its 'normal' set (Dn); "
            "re-run `cxrad prepare` with normal images (--normal-count)."
        )
    data = {"ndm": normal.images}
    if "udm" in modules:
        unl = (load_split(prepared, "unlabeled").images if "unlabeled" in have
               else np.empty((0,) + normal.images.shape[1:], np.float32))
        if len(unl) == 0:
            raise CxradError(
                f"{prepared}: the prepared data has no 'unlabeled' images (Du), which the UDM trains on; "
                "use --module ndm, or re-run `cxrad prepare` with --unlabeled-count."
            )
        data["udm"] = np.concatenate([normal.images, unl])
    data = {m: data[m] for m in modules}
    size = normal.images.shape[-1]
    if size % 2**depth or normal.images.shape[-2] != size:
        raise CxradError(
            f"{prepared}: images are {normal.images.shape[-2]}x{size} px; networks of depth {depth} need a square "
            f"side that is a multiple of {2**depth}; re-run `cxrad prepare --size {max(2**depth, 64)}` or change "
            "--depth."
        )
    for m, images in data.items():
        if len(images) < batch_size:
            what = "Dn" if m == "ndm" else "Dn ∪ Du"
            raise CxradError(
                f"{prepared}: {what} has {len(images)} images, fewer than --batch-size {batch_size} "
                f"(incomplete batches are dropped); use --batch-size {len(images)} or less."
            )
    return data, size


def run_config(cfg: EnsembleConfig, prepared: Path, size: int) -> dict[str, Any]:
    """What RUN/manifest.json records as the run's configuration (compared on re-runs)."""
    body = {"method": METHOD, **identity(cfg)}
    modules = _modules(cfg)
    body.update(
        modules=modules,
        image_size=size,
        seeds={m: [member_seed(cfg.seed, m, i, paired=cfg.paired_init) for i in range(cfg.members)] for m in modules},
        prepared=input_record(prepared),
        preprocessing=preprocessing_of(prepared),
    )
    return body


def expected_run_config(cfg: EnsembleConfig, prepared: Path) -> dict[str, Any]:
    """The run configuration `train-ensemble` would record for ``cfg`` on ``prepared`` (the ensemble
    manifest's too), without loading the images: how `cxrad run` tells whether the step is done."""
    read_manifest(prepared, "prepared")
    return run_config(cfg, prepared, int(preprocessing_of(prepared)["size"]))


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON file, or None when missing or unreadable (a member not finished)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def has_checkpoints(run: Path, cfg: EnsembleConfig, member: int | None = None) -> bool:
    """Whether a member this process would train (all, `member`, or the SLURM array task's) has a
    checkpoint to resume: how `cxrad run` decides between a fresh start and ``resume=True``."""
    return any(RunLayout(run).member_checkpoint(m, i).is_file() for m, i in _jobs(cfg, member))


def _member_status(run: Path, module: str, i: int, digest: str, *,
                   load_checkpoint: bool = True) -> tuple[str, dict | None]:
    """'done' (weights + info of this config), 'ckpt' (a checkpoint to resume) or 'none'.

    ``load_checkpoint=False``: a checkpoint is not read (it would be deleted, or only 'done'
    matters); a damaged one is one line naming it and the fix.
    """
    info = read_json(RunLayout(run).member_info(module, i))
    weights = RunLayout(run).member_weights(module, i)
    if (info and info.get("config_sha256") == digest and weights.is_file()
            and weights.stat().st_size == info.get("weights_bytes")):
        return "done", info
    ckpt = RunLayout(run).member_checkpoint(module, i)
    if load_checkpoint and ckpt.is_file():
        fix = (f"delete it to train {module} member {i} again from the start, or re-run with --force "
               "(retrains every requested member).")
        c = load_torch(ckpt, fix=fix)
        if not isinstance(c, dict) or not isinstance(c.get("epoch"), int):
            raise CxradError(f"{ckpt}: not a cxrad checkpoint; {fix}")
        if c.get("config_sha256") == digest:
            return "ckpt", c
    return "none", None


def _remove_stale_temporaries(run: Path, jobs: list[tuple[str, int]]) -> None:
    """Delete what killed earlier processes left half-written of this process's members (their
    checkpoint, weights or info temporaries). Other members' files are left alone: processes on
    other hosts (SLURM array tasks) may be writing them."""
    layout = RunLayout(run)
    for module, i in jobs:
        names = [layout.member_checkpoint(module, i).name, layout.member_weights(module, i).name,
                 layout.member_info(module, i).name]
        for p in remove_stale_temporaries(layout.member_checkpoint(module, i).parent, names):
            progress.log(f"{run}: removed {p.name}, left by a process that was killed")


def _remove_member(run: Path, module: str, i: int) -> None:
    for p in (RunLayout(run).member_weights(module, i), RunLayout(run).member_info(module, i),
              RunLayout(run).member_checkpoint(module, i)):
        p.unlink(missing_ok=True)


def _append_log(run: Path, record: dict) -> None:
    # One os.write of a whole line with O_APPEND: lines of concurrent processes never interleave.
    path = RunLayout(run).ensemble_log
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise (os_error(exc, path) or exc) from None


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
def train_ensemble(prepared: Path, run: Path, cfg: EnsembleConfig, member: int | None = None,
                   resume: bool = False, force: bool = False) -> Path:
    """Train the NDM/UDM ensembles of ``cfg`` from ``prepared`` into ``run``; return ``run``.

    ``member``: train only member i (of each requested module); without it and with
    SLURM_ARRAY_TASK_ID = t set, train (module, member) = (modules[t // K], t % K).
    ``resume``: continue from checkpoints (an error when there is nothing to resume).
    ``force``: retrain the requested members even if finished, and replace a run made with
    another configuration.
    """
    prepared, run = Path(prepared), Path(run)
    if resume and force:
        raise CxradError("--resume and --force exclude each other: --resume continues a run, --force restarts it.")
    cfg.validate()
    device = resolve_device(cfg.device)
    modules = _modules(cfg)
    jobs = _jobs(cfg, member)
    data_np, size = _load_data(prepared, modules, cfg.batch_size, cfg.depth)
    config = run_config(cfg, prepared, size)
    digest = identity_digest(config)
    with contextlib.ExitStack() as members_held:
        with locks.holding(run, "set up", min_wait=RUN_LOCK_WAIT_S):
            todo, status = _begin_run(run, cfg, config, digest, jobs, device, members_held, resume=resume,
                                      force=force)
        for module in modules:
            # Members that start from the same epoch train together as one batched model.
            groups: dict[int, list[int]] = {}
            for m, i in todo:
                if m == module:
                    s, c = status[(m, i)]
                    groups.setdefault(c["epoch"] if s == "ckpt" else 0, []).append(i)
            if groups:
                _train_module(run, prepared, cfg, config, digest, module, groups, status, data_np[module], device)
    # this process's member locks are released: a process waiting for one of them never blocks this
    with locks.holding(run, "set up", min_wait=RUN_LOCK_WAIT_S):
        _finish_if_complete(run, config, digest, device)
    return run


def _begin_run(run: Path, cfg: EnsembleConfig, config: dict, digest: str, jobs: list[tuple[str, int]],
               device: torch.device, members_held: contextlib.ExitStack, *, resume: bool,
               force: bool) -> tuple[list[tuple[str, int]], dict]:
    """Under the run's lock: check the run folder, create or replace the run manifest, lock this
    process's members (another process training one of them is named and refused) and decide what
    to train -> (the (module, member) jobs to train, the status of every job)."""
    new_manifest = check_run_folder(run, config, force=force, resume=resume)
    if (run / MANIFEST_NAME).is_file():
        _lock_members(members_held, run, jobs)  # before reading their files: their trainer may be at work

    # --force deletes the requested members' checkpoints: never read them (one may be damaged)
    status = {job: _member_status(run, *job, digest, load_checkpoint=not force) for job in jobs}
    if not _check_resume(run, cfg, status, resume=resume, force=force):
        return [], status

    # ---- from here on we write ----
    if new_manifest:
        # The run manifest first: a process that checks the folder next must find a run, not a
        # folder holding only ensemble/. An old ensemble manifest left for a moment is harmless:
        # read_ensemble refuses it, its config differs from the new run's.
        run.mkdir(parents=True, exist_ok=True)
        write_manifest(run, "run", config, inputs={"prepared": config["prepared"]}, device=device_name(device),
                       extra={"method": METHOD})
        RunLayout(run).ensemble.mkdir(exist_ok=True)
        (RunLayout(run).ensemble / MANIFEST_NAME).unlink(missing_ok=True)
        _lock_members(members_held, run, jobs)
    if force:
        (RunLayout(run).ensemble / MANIFEST_NAME).unlink(missing_ok=True)
        for job in jobs:
            _remove_member(run, *job)
        status = {job: ("none", None) for job in jobs}
    _remove_stale_temporaries(run, jobs)
    todo = [job for job in jobs if status[job][0] != "done"]
    if not todo:
        progress.log(f"{run}: already trained with this configuration (nothing to do); use --force to retrain.")
    return todo, status


def _lock_members(held: contextlib.ExitStack, run: Path, jobs: list[tuple[str, int]]) -> None:
    """Hold the lock of each (module, member) this process trains until ``held`` closes. SLURM array
    tasks train different members and never wait for each other; two processes training the same
    member would overwrite each other's checkpoints."""
    for module, i in jobs:
        held.enter_context(locks.holding(RunLayout(run).module(module) / f"member-{i}", "trained"))


def _check_resume(run: Path, cfg: EnsembleConfig, status: dict, *, resume: bool, force: bool) -> bool:
    """Whether there is training to do given the members' status; refuses a resume without
    checkpoints and a fresh start over an unfinished checkpoint (it would be lost)."""
    if resume and not any(s == "ckpt" for s, _ in status.values()):
        if all(s == "done" for s, _ in status.values()):
            progress.log(f"{run}: the requested members are already trained; nothing to resume.")
            return False
        raise CxradError(f"{run}: nothing to resume (no checkpoint of the requested members); "
                         "start it without --resume.")
    if not resume and not force:
        for (module, i), (s, c) in status.items():
            if s == "ckpt":
                raise CxradError(
                    f"{RunLayout(run).member_checkpoint(module, i)}: an unfinished training is there (epoch "
                    f"{c['epoch']}/{cfg.epochs}); continue it with --resume or start over with --force."
                )
    return True


def _train_module(run: Path, prepared: Path, cfg: EnsembleConfig, config: dict, digest: str, module: str,
                  groups: dict[int, list[int]], status: dict, images01: np.ndarray, device: torch.device) -> None:
    """Train one module's member groups (members sharing a start epoch train as one batched model)."""
    data = torch.from_numpy(images01).to(device).mul_(2).sub_(1)  # [0,1] -> [-1,1]
    for start, members in sorted(groups.items()):
        ckpts = [status[(module, i)][1] for i in members] if start else None
        _train_group(run, prepared, cfg, config, digest, module, members, ckpts, data, device)


def _train_group(run: Path, prepared: Path, cfg: EnsembleConfig, config: dict, digest: str, module: str,
                 members: list[int], ckpts: list[dict] | None, data: torch.Tensor, device: torch.device) -> None:
    seeds = [config["seeds"][module][i] for i in members]
    arch = dict(size=config["image_size"], latent_dim=cfg.latent_dim, memory_items=cfg.memory_items,
                shrink_threshold=cfg.shrink_threshold, depth=cfg.depth)
    trainer = GroupTrainer(cfg.backbone, seeds, arch, cfg.lr, cfg.betas, cfg.weight_decay, device, ckpts, amp=cfg.amp,
                           ema_decay=cfg.ema_decay)
    loss_fn = losses.for_backbone(cfg.backbone, cfg.entropy_weight)
    if ckpts:
        progress.log(f"{run}: resuming {module} member(s) {members} at epoch {trainer.epoch}")
        _append_log(run, {"module": module, "members": members, "event": "resumed", "epoch": trainer.epoch})
    last_saved = {"epoch": trainer.epoch if ckpts else None}

    def save(_bound) -> None:
        for k, i in enumerate(members):
            state = trainer.member_checkpoint(k)
            state["config_sha256"] = digest
            save_torch_atomic(state, RunLayout(run).member_checkpoint(module, i), checksum=True)
        last_saved["epoch"] = trainer.epoch

    def on_epoch(epoch: int, values: list[float], seconds: float) -> None:
        for k, i in enumerate(members):
            trainer.history[k].append(values[k])
            trainer.wall_s[k] += seconds
            _append_log(run, {"module": module, "member": i, "epoch": epoch, "loss": values[k],
                              "epoch_s": round(seconds, 4)})

    resume_cmd = f"`cxrad train-ensemble {prepared} --run {run} --resume`"
    try:
        fit(BoundTrainer(trainer, data, cfg.batch_size, loss_fn), epochs=cfg.epochs,
            checkpoint_every=cfg.checkpoint_every, save=save, on_epoch=on_epoch,
            label=f"{module} {cfg.backbone} members {','.join(map(str, members))}")
    except Diverged as exc:
        kept = (f"the last good checkpoint (epoch {last_saved['epoch']}) is kept"
                if last_saved["epoch"] else "no checkpoint was written yet")
        raise CxradError(
            f"{run}: {module} {exc} — training stopped; {kept}; lower --lr or check the prepared images, "
            "then continue with --resume or restart with --force.", exit_code=3) from None
    except Interrupted as exc:
        raise CxradError(f"{run}: {module} training {exc}; checkpoint saved; continue with {resume_cmd}.",
                         exit_code=128 + exc.signum) from None

    final = trainer.final_model(data, cfg.batch_size)
    for k, i in enumerate(members):
        weights = RunLayout(run).member_weights(module, i)
        save_torch_atomic(final.member_state_dict(k), weights)
        write_json_atomic(RunLayout(run).member_info(module, i), {
            "module": module, "member": i, "seed": seeds[k], "epochs": trainer.epoch,
            "final_loss": trainer.history[k][-1], "losses": trainer.history[k],
            "wall_s": round(trainer.wall_s[k], 3), "trained_with": len(members),
            "weights": f"ema {cfg.ema_decay} + precise BN" if cfg.ema_decay > 0 else "last step",
            "device": device_name(device), "config_sha256": digest, "weights_bytes": weights.stat().st_size,
            "slurm": runtime_info().get("slurm", {}),
        })
        RunLayout(run).member_checkpoint(module, i).unlink(missing_ok=True)


def _finish_if_complete(run: Path, config: dict, digest: str, device: torch.device) -> None:
    """Write RUN/ensemble/manifest.json when every member of every module of the run is done."""
    infos: dict[str, list[dict]] = {}
    for module in config["modules"]:
        for i in range(config["members"]):
            s, info = _member_status(run, module, i, digest, load_checkpoint=False)
            if s != "done":
                return
            infos.setdefault(module, []).append(
                {k: info[k] for k in ("member", "seed", "epochs", "final_loss", "wall_s", "device")})
    folder = RunLayout(run).ensemble
    outputs = [str(RunLayout(run).member_weights(m, i).relative_to(folder))
               for m in config["modules"] for i in range(config["members"])]
    mpath = folder / MANIFEST_NAME
    if mpath.is_file() and (read_json(mpath) or {}).get("config") == to_jsonable(config):
        return
    write_manifest(folder, "ensemble", config, outputs=outputs, device=device_name(device),
                   inputs={"run": {"path": str(run.resolve()), "kind": "run",
                                   "manifest_sha256": sha256_file(run / MANIFEST_NAME)}},
                   timings={f"{m}/member-{x['member']}": x["wall_s"] for m, xs in infos.items() for x in xs},
                   extra={"members": infos})
    progress.log(f"{run}: ensemble complete ({', '.join(config['modules'])} × {config['members']} "
                 f"{config['backbone']})")

