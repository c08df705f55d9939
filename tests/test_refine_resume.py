"""`cxrad refine` through the shared training loop: a walltime signal in the middle of an epoch
checkpoints and stops, --resume finishes to an ASR-Net bitwise identical to an uninterrupted run;
a NaN loss stops with a one-line error and leaves the last checkpoint intact."""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

import pytest
import torch

from cxrad.errors import CxradError
from cxrad.layout import ASR_CHECKPOINT, ASR_MODEL, MANIFEST
from cxrad.methods.ddad import refine as refine_mod
from cxrad.methods.ddad.config import EnsembleConfig, RefineConfig, SynthConfig
from cxrad.methods.ddad.refine import refine

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 3
CFG = RefineConfig(inputs="dual", epochs=EPOCHS, batch_size=8, hidden_channels=8, checkpoint_every=1, device="cpu")


@pytest.fixture(scope="module")
def run(prepared_sample32, tmp_path_factory) -> Path:
    """A tiny run (32 px, K = 2, one ensemble epoch) with FPI recipes for EPOCHS ASR epochs."""
    from cxrad.methods.ddad.synthesize import synthesize
    from cxrad.methods.ddad.train_ensemble import train_ensemble

    run = tmp_path_factory.mktemp("refine-resume") / "run"
    train_ensemble(prepared_sample32, run, EnsembleConfig(members=2, epochs=1, batch_size=16, device="cpu"))
    synthesize(run, SynthConfig(epochs=EPOCHS, preview_count=4))
    return run


@pytest.fixture(scope="module")
def uninterrupted(run, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The reference ASR-Net, trained with the tests' thread count (one_thread): reductions must be
    split the same way for results to be bit-identical."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = refine(run, CFG, out=tmp_path_factory.mktemp("refine-ref") / "dual")
    finally:
        torch.set_num_threads(threads)
    return _state_dict(out)


def _state_dict(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / ASR_MODEL, map_location="cpu", weights_only=True)["state_dict"]


def _assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _epoch_of_checkpoint(out: Path) -> int:
    return int(torch.load(out / ASR_CHECKPOINT, map_location="cpu", weights_only=True)["epoch"])


def test_sigusr1_mid_epoch_checkpoints_then_resume_is_bitwise_identical(run, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "dual"
    real = refine_mod.synthetic_batches
    calls = {"epochs": 0, "sent": False}

    def signalled_in_epoch_2(*args, **kwargs):
        """Epoch 2's batches (the second call); SIGUSR1 arrives after its first batch."""
        calls["epochs"] += 1
        for i, batch in enumerate(real(*args, **kwargs)):
            yield batch
            if calls["epochs"] == 2 and i == 0 and not calls["sent"]:
                calls["sent"] = True
                signal.raise_signal(signal.SIGUSR1)

    monkeypatch.setattr(refine_mod, "synthetic_batches", signalled_in_epoch_2)
    with pytest.raises(CxradError) as info:
        refine(run, CFG, out=out)
    monkeypatch.undo()
    assert calls["sent"]
    err = info.value
    assert err.exit_code == 128 + signal.SIGUSR1
    message = str(err)
    assert "\n" not in message and "SIGUSR1" in message
    # out is not the run's own refine folder, which is all the CLI knows: the hint is Python's
    assert "checkpoint saved" in message and f"out={str(out)!r}, resume=True" in message
    # the epoch in which the signal arrived was finished and checkpointed; nothing final was written
    assert _epoch_of_checkpoint(out) == 2
    assert not (out / ASR_MODEL).exists() and not (out / MANIFEST).exists()

    # without --resume, a fresh start; with it, training continues from epoch 2
    refine(run, CFG, out=out, resume=True)
    assert (out / MANIFEST).is_file()
    _assert_bitwise(uninterrupted, _state_dict(out))


def test_nan_loss_stops_and_keeps_the_last_checkpoint(run, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "dual"
    real = refine_mod.focal_loss
    seen = {"epoch": None, "checkpoint": None}

    def poisoned(logits, target, gamma=2.0):
        """NaN from epoch 2 on (1-based), once epoch 1's checkpoint is on disk."""
        if seen["checkpoint"] is None and (out / ASR_CHECKPOINT).is_file():
            seen["checkpoint"] = (out / ASR_CHECKPOINT).read_bytes()
        loss = real(logits, target, gamma)
        return loss * float("nan") if seen["checkpoint"] is not None else loss

    monkeypatch.setattr(refine_mod, "focal_loss", poisoned)
    with pytest.raises(CxradError) as info:
        refine(run, CFG, out=out)
    monkeypatch.undo()
    err = info.value
    message = str(err)
    assert err.exit_code == 3
    assert "\n" not in message and "nan at epoch 2" in message
    assert "checkpoint is intact" in message and f"out={str(out)!r}, resume=True" in message
    # the checkpoint of epoch 1 is untouched: nothing of the diverged epoch was saved
    assert seen["checkpoint"] is not None
    assert (out / ASR_CHECKPOINT).read_bytes() == seen["checkpoint"] and _epoch_of_checkpoint(out) == 1
    assert not (out / ASR_MODEL).exists() and not (out / MANIFEST).exists()

    # resumed from that checkpoint without the fault, training ends where the uninterrupted run did
    refine(run, CFG, out=out, resume=True)
    _assert_bitwise(uninterrupted, _state_dict(out))


def test_donor_fraction_trains_on_the_top_donors_and_differs_from_all_donors(run, uninterrupted, tmp_path):
    """The default blends only from the upper half of Du's maps (recorded); every donor
    (--donor-fraction 1) gives a different model from the same recipes: the donors really changed."""
    assert RefineConfig().donor_fraction == 0.5
    out = refine(run, dataclasses.replace(CFG, donor_fraction=1.0), out=tmp_path / "dual")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["donor_fraction"] == 1.0
    sd = _state_dict(out)
    assert any(not torch.equal(sd[k], uninterrupted[k]) for k in sd)


def test_donor_fraction_leaves_image_space_recipes_as_written(run, tmp_path, capsys):
    """Image-space recipes (the reference FPI) blend Dn images, which have no maps to rank: the
    donor fraction cannot apply, says so, and the model equals one trained with every donor."""
    from cxrad.methods.ddad.synthesize import synthesize

    synth = tmp_path / "synth-image"
    synthesize(run, SynthConfig(epochs=1, preview_count=0, space="image"), out=synth)
    half = refine(run, dataclasses.replace(CFG, epochs=1, donor_fraction=0.5), synth=synth, out=tmp_path / "half")
    assert "applies to map-space FPI only" in capsys.readouterr().err
    every = refine(run, dataclasses.replace(CFG, epochs=1, donor_fraction=1.0), synth=synth, out=tmp_path / "all")
    a, b = _state_dict(half), _state_dict(every)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_amp_trains_asr_net_in_bf16_and_keeps_fp32_statistics(run, uninterrupted, tmp_path, monkeypatch):
    """--amp: the training forward pass yields bf16 logits (autocast on the CPU too), the loss and
    precise BN stay fp32, the result is a different model, and it is recorded in the identity;
    without --amp the identity has no `amp` key, so runs from before the option keep theirs."""
    from cxrad.config import identity

    seen = {"logits": set(), "bn_autocast": []}
    real_loss, real_bn = refine_mod.focal_loss, refine_mod.precise_bn

    def loss_spy(logits, mask, gamma):
        seen["logits"].add(logits.dtype)
        return real_loss(logits, mask, gamma)

    def bn_spy(net, inputs):
        seen["bn_autocast"].append(torch.is_autocast_enabled("cpu"))
        return real_bn(net, inputs)

    monkeypatch.setattr(refine_mod, "focal_loss", loss_spy)
    monkeypatch.setattr(refine_mod, "precise_bn", bn_spy)
    out = refine(run, dataclasses.replace(CFG, amp=True), out=tmp_path / "dual")
    assert seen["logits"] == {torch.bfloat16} and seen["bn_autocast"] == [False]
    sd = _state_dict(out)
    assert all(v.dtype != torch.bfloat16 and torch.isfinite(v.float()).all() for v in sd.values())
    assert any(not torch.equal(sd[k], uninterrupted[k]) for k in sd)
    assert json.loads((out / MANIFEST).read_text())["config"]["amp"] is True
    assert "amp" not in identity(CFG) and identity(dataclasses.replace(CFG, amp=True))["amp"] is True


def test_a_stopped_refine_of_the_runs_own_folder_names_the_cli_to_resume(run, tmp_path, monkeypatch):
    # the message used to name `cxrad refine RUN --resume` for any folder, though the CLI can only
    # resume RUN/refine/<inputs>; the tests above check the hint for other folders
    import shutil

    real = refine_mod.synthetic_batches

    def signalled(*args, **kwargs):
        yield from real(*args, **kwargs)
        signal.raise_signal(signal.SIGUSR1)

    monkeypatch.setattr(refine_mod, "synthetic_batches", signalled)
    try:
        with pytest.raises(CxradError) as info:
            refine(run, CFG)
        assert f"`cxrad refine {run} --inputs dual --resume`" in str(info.value)
        assert _epoch_of_checkpoint(run / "refine" / "dual") == 1
    finally:
        shutil.rmtree(run / "refine", ignore_errors=True)   # the module's other tests never look there
