"""`cxrad fit`: the training stage of single-model methods (cxrad/methods/fitting.py), exercised
with a toy method (tests/toy_method.py) on real sample images: run and model manifests, idempotent
re-runs, refusals, stop signal + bit-exact resume, the generic stages and `cxrad run` on its runs."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
from toy_method import ToyFitMethod, ToyFitTrainer

from cxrad import methods
from cxrad.layout import RunLayout


@pytest.fixture(autouse=True)
def toyfit():
    methods.register("toyfit", ToyFitMethod())
    yield
    methods._REGISTRY.pop("toyfit", None)
    ToyFitTrainer.stop_at = None


def _kept(run) -> torch.Tensor:
    return torch.load(RunLayout(run).model / "model.pt", weights_only=True)["mean"]


def test_fit_writes_a_run_of_the_method_and_is_idempotent(cli, prepared_sample32, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli("fit", prepared_sample32, "--run", run, "--method", "toyfit", "--set", "epochs=2")
    assert code == 0, err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["kind"] == "run" and manifest["method"] == "toyfit"
    assert manifest["config"]["toyfit"]["epochs"] == 2 and "device" not in manifest["config"]["toyfit"]
    model = json.loads((run / "model" / "manifest.json").read_text())
    assert model["kind"] == "model" and model["epochs"] == 2 and model["train_images"] == 30
    log = json.loads((run / "model" / "log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2] and log[1]["losses"][0] < log[0]["losses"][0]
    assert not (run / "model" / "checkpoint.ckpt").exists()
    # the kept mean approaches the normal images' mean (SGD on the squared error)
    from cxrad.io.store import load_split

    target = load_split(prepared_sample32, "normal").images.mean(0)
    assert np.abs(_kept(run).numpy() - target).mean() < np.abs(target).mean()

    stamp = (run / "model" / "model.pt").stat().st_mtime_ns
    code, _, err = cli("fit", prepared_sample32, "--run", run, "--method", "toyfit", "--set", "epochs=2",
                       "--device", "cpu")
    assert code == 0 and "up to date" in err
    assert (run / "model" / "model.pt").stat().st_mtime_ns == stamp

    code, _, err = cli("fit", prepared_sample32, "--run", run, "--method", "toyfit", "--set", "epochs=3")
    assert code == 2 and "different configuration (differs in: toyfit)" in err and "--force" in err
    assert (run / "model" / "model.pt").stat().st_mtime_ns == stamp
    code, _, err = cli("fit", prepared_sample32, "--run", run, "--method", "toyfit", "--set", "epochs=3", "--force")
    assert code == 0, err
    assert json.loads((run / "model" / "manifest.json").read_text())["epochs"] == 3


def test_stop_signal_checkpoints_and_resume_is_bit_exact(cli, prepared_sample32, tmp_path):
    ref = tmp_path / "ref"
    assert cli("fit", prepared_sample32, "--run", ref, "--method", "toyfit", "--set", "epochs=4")[0] == 0

    run = tmp_path / "run"
    ToyFitTrainer.stop_at = 2
    code, _, err = cli("fit", prepared_sample32, "--run", run, "--method", "toyfit", "--set", "epochs=4")
    assert code == 128 + signal.SIGUSR1 and "stopped by SIGUSR1 after epoch 2" in err and "--resume" in err
    assert (run / "model" / "checkpoint.ckpt").is_file() and not (run / "model" / "manifest.json").exists()
    ToyFitTrainer.stop_at = None

    code, _, err = cli("fit", prepared_sample32, "--run", run, "--method", "toyfit", "--set", "epochs=4")
    assert code == 2 and "unfinished training" in err       # a fresh start would lose the checkpoint
    code, _, err = cli("fit", prepared_sample32, "--run", run, "--method", "toyfit", "--set", "epochs=5",
                       "--resume")
    assert code == 2 and "different configuration" in err
    code, _, err = cli("fit", prepared_sample32, "--run", run, "--method", "toyfit", "--set", "epochs=4",
                       "--resume")
    assert code == 0, err
    assert torch.equal(_kept(run), _kept(ref))
    assert [r["epoch"] for r in json.loads((run / "model" / "log.json").read_text())] == [1, 2, 3, 4]


@pytest.mark.parametrize("args, message", [
    (("--method", "nosuch"), "method 'nosuch' is not known"),
    (("--method", "ddad"), "trained by its own commands"),
    (("--method", "toyfit", "--set", "epochs=0"), "--set epochs=0: must be at least 1"),
    (("--method", "toyfit", "--set", "nosuch=1"), "--set nosuch: not an option of toyfit"),
    (("--method", "toyfit", "--set", "epochs"), "--set epochs: expected key=value"),
    (("--method", "toyfit", "--set", "lr=fast"), "--set lr=fast: must be"),
    (("--method", "toyfit", "--device", "gpu"), "--device gpu: not understood"),
    (("--method", "toyfit", "--resume"), "nothing to resume"),
])
def test_bad_fit_options_are_one_line_errors(cli, prepared_sample32, tmp_path, args, message):
    run = tmp_path / "run"
    code, _, err = cli("fit", prepared_sample32, "--run", run, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (run / "model").exists()


def test_config_file_table_then_set(cli, prepared_sample32, tmp_path):
    toml = tmp_path / "cfg.toml"
    toml.write_text("[toyfit]\nepochs = 2\nlr = 0.25\n")
    run = tmp_path / "run"
    assert cli("fit", prepared_sample32, "--run", run, "--method", "toyfit", "--config", toml,
               "--set", "epochs=1")[0] == 0
    cfg = json.loads((run / "model" / "manifest.json").read_text())["config"]
    assert cfg["epochs"] == 1 and cfg["lr"] == 0.25
    toml.write_text("[toyfit]\nepochs = 0\n")
    code, _, err = cli("fit", prepared_sample32, "--run", tmp_path / "r2", "--method", "toyfit", "--config", toml)
    assert code == 2 and f"{toml}: [toyfit] epochs = 0: must be at least 1" in err


def test_generic_stages_and_run_pipeline_on_a_fit_run(cli, prepared_sample32, tmp_path):
    from cxrad.pipeline import run_pipeline

    run = tmp_path / "run"
    code, _, err = cli("score", run)
    assert code == 2 and "not a cxrad run" in err
    assert cli("fit", prepared_sample32, "--run", run, "--method", "toyfit", "--set", "epochs=1")[0] == 0
    assert cli("score", run)[0] == 0
    assert cli("evaluate", run)[0] == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["decision_score"] == "D_fit" and 0.0 <= metrics["scores"]["D_fit"]["auc"] <= 1.0
    # retraining makes the stored maps stale: evaluate must not reuse them
    maps_before = json.loads((run / "maps" / "manifest.json").read_text())
    assert cli("fit", prepared_sample32, "--run", run, "--method", "toyfit", "--set", "epochs=2", "--force")[0] == 0
    assert cli("score", run)[0] == 0
    maps_after = json.loads((run / "maps" / "manifest.json").read_text())
    assert maps_after["inputs"]["model"] != maps_before["inputs"]["model"]

    from conftest import SAMPLE

    toml = tmp_path / "pipe.toml"
    toml.write_text(f'[data]\nsource = "{SAMPLE.as_posix()}"\nlabels = "{SAMPLE.as_posix()}/labels.csv"\n'
                    'name = "s32"\n[prepare]\nsize = 32\n[method]\nname = "toyfit"\n[toyfit]\nepochs = 2\n')
    result = run_pipeline(toml, tmp_path / "work")
    assert [s["name"] for s in result["steps"]] == ["prepare", "fit", "score", "evaluate"]
    assert json.loads((RunLayout(result["run"]).model / "manifest.json").read_text())["epochs"] == 2
    again = run_pipeline(toml, tmp_path / "work")
    assert all(s["action"] == "skip" for s in again["steps"]), again["steps"]
