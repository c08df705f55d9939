"""Manifests, atomic writes and the no-op / --force rules every stage relies on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cxrad import artifacts
from cxrad.artifacts import (
    atomic_path,
    begin_output,
    check_input_unchanged,
    finish_output,
    input_record,
    read_manifest,
    write_manifest,
)
from cxrad.errors import CxradError


def _artifact(folder: Path, kind="prepared", config=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.bin").write_bytes(b"abc")
    write_manifest(folder, kind, config or {"size": 64}, outputs=["data.bin"])
    return folder


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_existing(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_manifest_records_provenance_and_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    folder = _artifact(tmp_path / "a")
    m = json.loads((folder / "manifest.json").read_text())
    assert m["schema_version"] == artifacts.SCHEMA_VERSION
    assert m["kind"] == "prepared" and m["config"] == {"size": 64}
    # sha256 of b"abc"
    assert m["outputs"]["data.bin"]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert m["runtime"]["slurm"]["SLURM_JOB_ID"] == "4242"
    assert "torch" in m["runtime"] and "host" in m["runtime"]


def test_read_manifest_errors_name_the_fix(tmp_path):
    with pytest.raises(CxradError, match="no such folder"):
        read_manifest(tmp_path / "missing", "prepared")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CxradError, match="cxrad prepare"):
        read_manifest(tmp_path / "empty", "prepared")
    folder = _artifact(tmp_path / "a", kind="maps")
    with pytest.raises(CxradError, match="is a maps artifact, expected a prepared"):
        read_manifest(folder, "prepared")


def test_read_manifest_rejects_other_schema_and_changed_outputs(tmp_path):
    folder = _artifact(tmp_path / "a")
    m = json.loads((folder / "manifest.json").read_text())
    m["schema_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CxradError, match="schema 99"):
        read_manifest(folder)
    folder = _artifact(tmp_path / "b")
    (folder / "data.bin").write_bytes(b"abcd")
    with pytest.raises(CxradError, match="changed since the manifest"):
        read_manifest(folder)
    folder = _artifact(tmp_path / "c")
    (folder / "data.bin").write_bytes(b"xyz")  # same size, other content
    read_manifest(folder)
    with pytest.raises(CxradError, match="digest"):
        read_manifest(folder, verify=True)


def test_begin_output_noop_refuse_force(tmp_path):
    folder = tmp_path / "out"
    assert begin_output(folder, "prepared", {"size": 64}, force=False) is True
    _artifact(folder, config={"size": 64})
    finish_output(folder)
    assert not (folder / ".cxrad-partial").exists()
    # same config: nothing to do
    assert begin_output(folder, "prepared", {"size": 64}, force=False) is False
    # different config: refused
    with pytest.raises(CxradError, match="different configuration.*--force"):
        begin_output(folder, "prepared", {"size": 128}, force=False)
    # other kind: refused
    with pytest.raises(CxradError, match="holds a prepared artifact, not maps"):
        begin_output(folder, "maps", {}, force=False)
    # force: the old manifest goes first, so a crash cannot leave it describing new files
    assert begin_output(folder, "prepared", {"size": 128}, force=True) is True
    assert not (folder / "manifest.json").exists()


def test_begin_output_refuses_foreign_folder_but_redoes_killed_run(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(CxradError, match="not a cxrad artifact"):
        begin_output(foreign, "prepared", {}, force=False)
    killed = tmp_path / "killed"
    begin_output(killed, "prepared", {}, force=False)
    (killed / ".data.h5.123.tmp").write_bytes(b"half")
    assert begin_output(killed, "prepared", {}, force=False) is True


def test_input_record_detects_changes(tmp_path):
    folder = _artifact(tmp_path / "a")
    rec = input_record(folder)
    assert rec["kind"] == "prepared" and os.path.isabs(rec["path"])
    check_input_unchanged(rec)
    write_manifest(folder, "prepared", {"size": 32}, outputs=["data.bin"])
    with pytest.raises(CxradError, match="changed since it was used"):
        check_input_unchanged(rec)


def test_operational_fields_do_not_change_an_artifacts_identity(tmp_path):
    """Device, batch size of score, checkpoint cadence...: a re-run with other values is a no-op."""
    from cxrad.config import ScoreConfig, identity, identity_digest
    from cxrad.methods.ddad.config import EnsembleConfig

    assert "device" not in identity(ScoreConfig()) and "batch_size" not in identity(ScoreConfig())
    assert {"module", "device", "checkpoint_every"}.isdisjoint(identity(EnsembleConfig()))
    assert identity_digest(EnsembleConfig(device="cpu", checkpoint_every=1)) == identity_digest(EnsembleConfig())
    assert identity_digest(EnsembleConfig(lr=1e-3)) != identity_digest(EnsembleConfig())
    folder = tmp_path / "maps"
    assert begin_output(folder, "maps", ScoreConfig(device="cpu"), force=False) is True
    m = write_manifest(folder, "maps", ScoreConfig(device="cpu"))
    assert m["identity"] == identity_digest(ScoreConfig()) and m["config"]["device"] == "cpu"
    finish_output(folder)
    assert begin_output(folder, "maps", ScoreConfig(device="cuda", batch_size=8), force=False) is False
    with pytest.raises(CxradError, match="different configuration"):
        begin_output(folder, "maps", ScoreConfig(split="val", device="cpu"), force=False)


def test_an_added_field_keeps_old_identities_only_at_the_value_they_were_made_with():
    """A field added with a new default (made_with = the old behaviour): old artifacts, made before
    the field existed, keep their identity only for configs that ask for the old behaviour."""
    from dataclasses import dataclass

    from cxrad.config import added_field, identity

    @dataclass
    class Before:
        lr: float = 0.1

    @dataclass
    class After:
        lr: float = 0.1
        share: float = added_field(0.5, made_with=1.0)
        kept: int = added_field(3)

    assert identity(After(share=1.0)) == identity(Before()) == {"lr": 0.1}
    assert identity(After()) == {"lr": 0.1, "share": 0.5}     # the new default is a new artifact
    assert identity(After(kept=4, share=1.0)) == {"lr": 0.1, "kept": 4}
