"""`cxrad train-ensemble`: run artifact, loader, equivalence of batched and per-member training,
cluster mode, re-run semantics and one-line errors that write nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cxrad.artifacts import write_manifest
from cxrad.cli import main
from cxrad.errors import CxradError
from cxrad.io.store import ImageSet, write_prepared_h5
from cxrad.layout import RunLayout
from cxrad.methods.ddad import losses
from cxrad.methods.ddad.config import EnsembleConfig
from cxrad.methods.ddad.ensembles import load_module, open_ensembles, read_ensemble
from cxrad.methods.ddad.train_ensemble import member_seed, train_ensemble
from cxrad.runs import open_run

FAST = ["--epochs", "2", "--batch-size", "8", "--members", "2", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def cli(args, capsys):
    """Run the CLI in-process -> (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def weights(run, module, k):
    return [torch.load(RunLayout(run).member_weights(module, i), weights_only=True) for i in range(k)]


def test_end_to_end_run_and_loader(prepared_sample32, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(["train-ensemble", prepared_sample32, "--run", run, *FAST], capsys)
    assert code == 0, err
    manifest = open_run(run).manifest
    c = manifest["config"]
    assert (c["backbone"], c["members"], c["image_size"], c["modules"]) == ("ae", 2, 32, ["ndm", "udm"])
    assert c["prepared"]["kind"] == "prepared" and "preprocessing" in c
    # Paired init (default): member i has one seed in both modules, distinct across members.
    assert c["paired_init"] is True
    assert c["seeds"]["ndm"] == c["seeds"]["udm"] and len(set(c["seeds"]["ndm"])) == 2
    ens = read_ensemble(open_run(run))
    assert [m["seed"] for m in ens["members"]["ndm"]] == c["seeds"]["ndm"]
    assert all(m["epochs"] == 2 for m in ens["members"]["udm"])
    lines = [json.loads(x) for x in (run / "ensemble" / "log.jsonl").read_text().splitlines()]
    assert len([x for x in lines if "loss" in x]) == 2 * 2 * 2
    assert not RunLayout(run).member_checkpoint("ndm", 0).exists()  # removed once finished

    model = load_module(open_run(run), "udm", "cpu")
    assert model.backbone == "ae" and not model.training
    with torch.no_grad():
        assert model(torch.zeros(3, 1, 32, 32)).shape == (2, 3, 1, 32, 32)

    # Same config again: a no-op that says so; another config: refused, nothing changed.
    before = (run / "manifest.json").read_bytes()
    code, out, err = cli(["train-ensemble", prepared_sample32, "--run", run, *FAST], capsys)
    assert code == 0 and "nothing to do" in err
    code, out, err = cli(["train-ensemble", prepared_sample32, "--run", run, *FAST, "--lr", "1e-3"], capsys)
    assert code != 0 and "different configuration" in err and "lr" in err and len(err.strip().splitlines()) == 1
    assert (run / "manifest.json").read_bytes() == before


def test_independent_init_gives_every_member_its_own_seed(prepared_sample32, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(["train-ensemble", prepared_sample32, "--run", run, *FAST, "--epochs", "1",
                          "--independent-init"], capsys)
    assert code == 0, err
    c = open_run(run).config
    assert c["paired_init"] is False and len(set(c["seeds"]["ndm"] + c["seeds"]["udm"])) == 4
    # NDM seeds do not depend on pairing: an NDM-only comparison across the two modes is fair.
    assert c["seeds"]["ndm"] == [member_seed(0, "ndm", i, paired=True) for i in range(2)]


def test_aeu_loader_returns_mean_and_logvar(prepared_sample32, tmp_path):
    run = tmp_path / "run"
    cfg = EnsembleConfig(module="ndm", members=2, backbone="aeu", epochs=1, batch_size=8, device="cpu")
    train_ensemble(prepared_sample32, run, cfg)
    model = load_module(open_run(run), "ndm")
    with torch.no_grad():
        mean, logvar = model(torch.zeros(2, 1, 32, 32))
    assert mean.shape == logvar.shape == (2, 2, 1, 32, 32)
    with pytest.raises(CxradError, match="no udm ensemble"):
        load_module(open_run(run), "udm")


def test_depth_is_recorded_and_loaded_and_default_runs_keep_their_identity(prepared_sample32, tmp_path, capsys):
    deep, plain = tmp_path / "deep", tmp_path / "plain"
    code, _, err = cli(["train-ensemble", prepared_sample32, "--run", deep, *FAST, "--epochs", "1",
                        "--module", "ndm", "--depth", "5"], capsys)
    assert code == 0, err
    assert open_run(deep).config["depth"] == 5
    model = load_module(open_run(deep), "ndm", "cpu")
    assert model.depth == 5 and model.side == 1          # 32 px / 2^5
    with torch.no_grad():
        assert model(torch.zeros(3, 1, 32, 32)).shape == (2, 3, 1, 32, 32)
    # the reference depth stays out of the identity: runs made before the option exist keep theirs
    code, _, err = cli(["train-ensemble", prepared_sample32, "--run", plain, *FAST, "--epochs", "1",
                        "--module", "ndm"], capsys)
    assert code == 0, err
    assert "depth" not in open_run(plain).config and load_module(open_run(plain), "ndm", "cpu").depth == 4


def test_amp_trains_in_bf16_on_the_cpu_too(prepared_sample32, tmp_path, capsys, monkeypatch):
    """--amp on a CPU device is bf16 autocast there (it was refused before): the run finishes,
    records amp, and its weights differ from the fp32 run's of the same seeds. The kept weights'
    BN statistics are computed in fp32, as scoring will run them."""
    from cxrad.methods.ddad import trainer

    bn_autocast, real_bn = [], trainer.precise_bn
    monkeypatch.setattr(trainer, "precise_bn", lambda *a: bn_autocast.append(torch.is_autocast_enabled("cpu"))
                        or real_bn(*a))
    runs = {}
    for name, extra in (("fp32", []), ("bf16", ["--amp"])):
        runs[name] = tmp_path / name
        code, _, err = cli(["train-ensemble", prepared_sample32, "--run", runs[name], *FAST, "--epochs", "1",
                            "--module", "ndm", *extra], capsys)
        assert code == 0, err
    assert open_run(runs["bf16"]).config["amp"] is True and open_run(runs["fp32"]).config["amp"] is False
    assert bn_autocast == [False, False]     # one precise-BN pass per run
    a, b = weights(runs["fp32"], "ndm", 2)[0], weights(runs["bf16"], "ndm", 2)[0]
    assert all(torch.isfinite(b[k].float()).all() and b[k].dtype == a[k].dtype for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_batched_equals_one_member_per_process(prepared_sample32, tmp_path):
    """`--member i` processes and the batched ensemble train the same weights (CPU, 2 epochs)."""
    cfg = EnsembleConfig(members=3, epochs=2, batch_size=8, device="cpu")
    batched, single = tmp_path / "batched", tmp_path / "single"
    train_ensemble(prepared_sample32, batched, cfg)
    for i in range(3):
        train_ensemble(prepared_sample32, single, cfg, member=i)
    read_ensemble(open_run(single))  # the last member process wrote the ensemble manifest
    for module in ("ndm", "udm"):
        for a, b in zip(weights(batched, module, 3), weights(single, module, 3)):
            for key in a:
                torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=f"{module} {key}")


def test_slurm_array_task_selects_module_and_member(prepared_sample32, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")  # K=3: task 4 -> udm member 1
    run = tmp_path / "run"
    train_ensemble(prepared_sample32, run, EnsembleConfig(members=3, epochs=1, batch_size=8, device="cpu"))
    trained = sorted(p.relative_to(run / "ensemble").as_posix() for p in (run / "ensemble").rglob("*.pt"))
    assert trained == ["udm/member-1.pt"]
    assert not (run / "ensemble" / "manifest.json").exists()  # other tasks still missing
    with pytest.raises(CxradError, match="ensemble is not finished"):
        open_ensembles(open_run(run), torch.device("cpu"))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "6")
    with pytest.raises(CxradError, match="--array=0-5"):
        train_ensemble(prepared_sample32, run, EnsembleConfig(members=3, epochs=1, batch_size=8, device="cpu"))


def test_nan_loss_stops_and_keeps_last_checkpoint(prepared_sample32, tmp_path, monkeypatch):
    calls = {"n": 0}

    def poisoned(backbone, entropy_weight=0.0):
        def fn(out, xk):
            calls["n"] += 1
            value = losses.mse(out, xk)
            return value * float("nan") if calls["n"] > 3 * 3 else value  # 3 steps/epoch: epoch 4 is NaN
        return fn

    monkeypatch.setattr(losses, "for_backbone", poisoned)
    run = tmp_path / "run"
    cfg = EnsembleConfig(module="ndm", members=2, epochs=6, batch_size=8, checkpoint_every=2, device="cpu")
    with pytest.raises(CxradError, match=r"nan at epoch 4.*checkpoint \(epoch 2\) is kept") as info:
        train_ensemble(prepared_sample32, run, cfg)
    assert info.value.exit_code != 0
    ckpt = torch.load(RunLayout(run).member_checkpoint("ndm", 0), weights_only=True)
    assert ckpt["epoch"] == 2 and not RunLayout(run).member_weights("ndm", 0).exists()


# ---------------------------------------------------------------------------------------------
# weight average (EnsembleConfig.ema_decay)
# ---------------------------------------------------------------------------------------------
def _trainer(ema_decay):
    from cxrad.methods.ddad.trainer import GroupTrainer

    arch = dict(size=32, latent_dim=16, memory_items=25, shrink_threshold=0.0)
    return GroupTrainer("ae", [11, 12], arch, 5e-4, (0.5, 0.999), 0.0, torch.device("cpu"), ema_decay=ema_decay)


def test_weight_average_follows_the_warm_up_formula(prepared_sample32):
    """The kept average equals the EMA computed by hand from the recorded iterates, with decay
    min(d, (1+t)/(10+t)) at step t, and differs from the last step's weights."""
    from cxrad.io.store import load_split

    data = torch.from_numpy(load_split(prepared_sample32, "normal").images) * 2 - 1
    trainer = _trainer(0.9)
    name, param = "decoder.0.weight", dict(trainer.model.named_parameters())["decoder.0.weight"]
    expected = param.detach().clone()
    iterates = []
    trainer.optimizer.register_step_post_hook(lambda *a: iterates.append(param.detach().clone()))
    for _ in range(3):
        trainer.run_epoch(data, 8, losses.for_backbone("ae"))
    assert trainer.steps == len(iterates) == 3 * (len(data) // 8)
    for t, w in enumerate(iterates, start=1):
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * w
    ema = dict(trainer.ema.named_parameters())[name]
    torch.testing.assert_close(ema, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ema, param, atol=1e-4)


def test_kept_average_has_bn_statistics_of_the_training_set(prepared_sample32):
    """final_model(): BN running mean of the first layer = mean over the full batches of the data
    of the averaged weights' first convolution output ("precise BN"), not the training's EMA stats."""
    from cxrad.io.store import load_split

    data = torch.from_numpy(load_split(prepared_sample32, "normal").images) * 2 - 1
    trainer = _trainer(0.99)
    trainer.run_epoch(data, 8, losses.for_backbone("ae"))
    final = trainer.final_model(data, 8)
    assert final is trainer.ema and not final.training
    used = data[: (len(data) // 8) * 8, None]
    with torch.no_grad():
        conv_out = final.encoder[0](used.expand(-1, 2, -1, -1))     # members side by side: (N, K·C, h, w)
    torch.testing.assert_close(final.encoder[1].running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-4)
    plain = _trainer(0.0)
    assert plain.ema is None and plain.final_model(data, 8) is plain.model and not plain.model.training


def test_saved_weights_are_the_average_or_the_last_step(prepared_sample32, tmp_path):
    base = dict(module="ndm", members=2, epochs=2, batch_size=8, device="cpu")
    avg, last = tmp_path / "avg", tmp_path / "last"
    train_ensemble(prepared_sample32, avg, EnsembleConfig(**base))
    train_ensemble(prepared_sample32, last, EnsembleConfig(**base, ema_decay=0.0))
    assert open_run(avg).config["ema_decay"] == EnsembleConfig().ema_decay > 0
    info = json.loads((avg / "ensemble" / "ndm" / "member-0.json").read_text())
    assert info["weights"].startswith("ema")
    assert json.loads((last / "ensemble" / "ndm" / "member-0.json").read_text())["weights"] == "last step"
    a, b = weights(avg, "ndm", 2), weights(last, "ndm", 2)
    assert not torch.allclose(a[0]["decoder.0.weight"], b[0]["decoder.0.weight"])


# ---------------------------------------------------------------------------------------------
# wrong inputs: one line, exit != 0, nothing written
# ---------------------------------------------------------------------------------------------
def _prepared_with_empty_normal(folder, like):
    from cxrad.io.store import load_split

    unl = load_split(like, "unlabeled")
    empty = ImageSet(unl.images[:0], unl.labels[:0], [], [], {})
    folder.mkdir()
    write_prepared_h5(folder / "data.h5", {"normal": empty, "unlabeled": unl}, [], {"size": 32})
    write_manifest(folder, "prepared", {"size": 32}, outputs=["data.h5"])
    return folder


def _snapshot(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


OPTION_CASES = {"members_1": ["--members", "1"], "cuda_without_gpu": ["--device", "cuda"],
                "resume_nothing": ["--resume"], "bad_backbone": ["--backbone", "vae"],
                "ema_decay_1": ["--ema-decay", "1"], "depth_too_deep_for_32px": ["--depth", "6"],
                "depth_8": ["--depth", "8"]}


@pytest.mark.parametrize("case", ["non_run_folder", "wrong_kind", "wrong_schema", "empty_normal", *OPTION_CASES])
def test_wrong_inputs_are_one_line_errors(case, prepared_sample32, tmp_path, capsys):
    prepared, run = prepared_sample32, tmp_path / "run"
    if case == "non_run_folder":
        run.mkdir()
        (run / "notes.txt").write_text("mine")
    elif case == "wrong_kind":
        prepared = tmp_path / "other"
        prepared.mkdir()
        write_manifest(prepared, "maps", {})
    elif case == "wrong_schema":
        prepared = tmp_path / "old"
        shutil.copytree(prepared_sample32, prepared)
        m = json.loads((prepared / "manifest.json").read_text())
        m["schema_version"] = 99
        (prepared / "manifest.json").write_text(json.dumps(m))
    elif case == "empty_normal":
        prepared = _prepared_with_empty_normal(tmp_path / "empty", prepared_sample32)
    elif case == "cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    extra = OPTION_CASES.get(case, [])
    before = _snapshot(run)
    args = ["train-ensemble", prepared, "--run", run, "--epochs", "1", "--batch-size", "8", "--device", "cpu", *extra]
    code, out, err = cli(args, capsys)
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and err.startswith("cxrad: error: "), err
    assert _snapshot(run) == before
    # option errors (EnsembleConfig.validate, device and amp checks) name the option and the value
    names = {"members_1": "--members 1:", "bad_backbone": "--backbone 'vae': use one of ae, memae, aeu",
             "ema_decay_1": "--ema-decay 1", "cuda_without_gpu": "--device cuda:", "amp_on_cpu": "--amp:",
             "depth_too_deep_for_32px": "multiple of 64; re-run `cxrad prepare --size 64` or change --depth",
             "depth_8": "--depth 8"}
    assert names.get(case, "cxrad: error: ") in err, err


def test_open_run_rejects_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(CxradError, match=r"not a cxrad run \(no run manifest\); create it with `cxrad train-ensemble"):
        open_run(tmp_path)


def test_force_retrains_and_resume_force_exclude(prepared_sample32, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train-ensemble", prepared_sample32, "--run", run, "--module", "ndm", "--epochs", "1",
            "--batch-size", "8", "--members", "2", "--device", "cpu"]
    assert cli(args, capsys)[0] == 0
    code, _, err = cli([*args, "--lr", "1e-3", "--force"], capsys)
    assert code == 0, err
    assert read_ensemble(open_run(run))["config"]["lr"] == 1e-3
    code, _, err = cli([*args, "--resume", "--force"], capsys)
    assert code != 0 and "exclude" in err
