"""`cxrad predict` streams its inputs in chunks (issue 19, 10b), and never decides by a threshold
that a retrained ASR-Net made stale (issue 19, item 1)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, tiny_config
from PIL import Image

SCORE_COLUMNS = ("A_rec", "A_intra", "A_inter", "R_intra", "R_dual")


def _inputs(folder: Path, n: int, bad_after: int | None = None) -> Path:
    """``n`` PNG studies (study00.png ...), and an unreadable ``study<k>b.png`` sorted after study k."""
    folder.mkdir(parents=True)
    jpegs = sorted((SAMPLE / "kermany" / "test").rglob("*.jpeg"))
    for i in range(n):
        Image.open(jpegs[i % len(jpegs)]).convert("L").save(folder / f"study{i:02d}.png")
    if bad_after is not None:
        (folder / f"study{bad_after:02d}b.png").write_text("not an image")
    return folder


def _rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def scorer_calls(monkeypatch):
    """The sizes of every ``Scorer.score`` call the DDAD-ASR method's scorer gets, in order."""
    from cxrad import methods

    method = methods.get("ddad")
    load = method.load_scorer
    calls: list[int] = []

    def load_scorer(run, device):
        scorer = load(run, device)
        score = scorer.score

        def counted(images01, **kw):
            calls.append(len(images01))
            return score(images01, **kw)

        scorer.score = counted
        return scorer

    monkeypatch.setattr(method, "load_scorer", load_scorer)
    return calls


@pytest.fixture
def pools(monkeypatch):
    """How many decoding process pools get started."""
    from cxrad.io import decode

    started: list[int] = []
    init = decode.DecodePool.__init__

    def counted(self, cfg, workers):
        init(self, cfg, workers)
        started.append(workers if self._pool is not None else 0)

    monkeypatch.setattr(decode.DecodePool, "__init__", counted)
    return started


def test_decode_iter_chunks_in_input_order(tmp_path):
    from cxrad.config import PrepareConfig
    from cxrad.io.decode import decode_all, decode_iter
    from cxrad.io.sources import Entry, Locator

    folder = _inputs(tmp_path / "in", 6, bad_after=2)
    entries = [Entry(id=str(f), loc=Locator(str(f)), label=-1, split="") for f in sorted(folder.iterdir())]
    cfg = PrepareConfig(size=32)
    chunks = list(decode_iter(iter(entries), cfg, workers=2, chunk=3))
    assert [len(c.entries) for c in chunks] == [3, 3, 1]
    assert [e.id for c in chunks for e in c.entries] == [e.id for e in entries]
    images, info = decode_all(entries, cfg, workers=2)
    got = [im for c in chunks for im in c.images]
    assert [im is None for im in got] == [im is None for im in images] == [False] * 3 + [True] + [False] * 3
    assert all(np.array_equal(a, b) for a, b in zip(got, images) if a is not None)
    assert "not an image" in chunks[1].info[0]


def test_predict_scores_chunk_by_chunk_like_one_pass(tiny_run, tmp_path, scorer_calls, pools):
    """chunk_size 4 over 10 readable inputs and a reject: the scorer sees 4, 4, 2 images (readable
    images re-batched across the reject), the decoding pool is started once for the calibration
    set and every chunk, and the outputs equal a one-chunk run row for row."""
    from cxrad.config import PredictConfig
    from cxrad.stages.predict import predict

    folder = _inputs(tmp_path / "in", 10, bad_after=3)
    normals = SAMPLE / "kermany" / "test" / "NORMAL"          # 20 images: the calibration minimum
    chunked = predict(tiny_run["run"], [folder], tmp_path / "chunked", PredictConfig(chunk_size=4, device="cpu"),
                      workers=2, calibration=[normals])
    assert scorer_calls == [20, 4, 4, 2]        # calibration normals first, then the chunks
    assert pools == [2]
    scorer_calls.clear()
    whole = predict(tiny_run["run"], [folder], tmp_path / "whole", PredictConfig(device="cpu"), workers=2,
                    calibration=[normals])
    assert scorer_calls == [20, 10]
    assert chunked.predicted == whole.predicted == 10
    assert chunked.rejected == whole.rejected and len(chunked.rejected) == 1
    assert chunked.threshold == whole.threshold
    a, b = _rows(tmp_path / "chunked"), _rows(tmp_path / "whole")
    assert [r["path"] for r in a] == [str(p) for p in sorted(folder.glob("study??.png"))]
    for ra, rb in zip(a, b, strict=True):
        assert {k: ra[k] for k in ("path", "decision_score", "threshold", "abnormal", "overlay")} == \
               {k: rb[k] for k in ("path", "decision_score", "threshold", "abnormal", "overlay")}
        np.testing.assert_allclose([float(ra[k]) for k in SCORE_COLUMNS], [float(rb[k]) for k in SCORE_COLUMNS],
                                   rtol=1e-5)
    overlays = sorted(p.name for p in (tmp_path / "chunked" / "overlays").iterdir())
    assert overlays == sorted(p.name for p in (tmp_path / "whole" / "overlays").iterdir())
    assert overlays == sorted(Path(r["overlay"]).name for r in a) and overlays[-1].startswith("000009_")
    manifest = json.loads((tmp_path / "chunked" / "manifest.json").read_text())
    assert manifest["config"]["predict"]["chunk_size"] == 4
    assert manifest["identity"] == json.loads((tmp_path / "whole" / "manifest.json").read_text())["identity"]
    assert not list((tmp_path / "chunked").glob(".*.tmp"))


KILL_AFTER_TWO_CHUNKS = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from cxrad import methods
    from cxrad.config import PredictConfig
    from cxrad.stages.predict import predict

    method = methods.get("ddad")
    load = method.load_scorer

    def load_scorer(run, device):
        scorer = load(run, device)
        score, calls = scorer.score, []

        def killed_at_third(images01, **kw):
            calls.append(len(images01))
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return score(images01, **kw)

        scorer.score = killed_at_third
        return scorer

    method.load_scorer = load_scorer
    predict(Path(sys.argv[1]), [Path(sys.argv[2])], Path(sys.argv[3]), PredictConfig(chunk_size=2, device="cpu"))
""")


def test_predict_killed_mid_stream_leaves_nothing_complete(tiny_run, tmp_path):
    """SIGKILL while the third chunk is scored: the rows so far sit in a temporary file, there is no
    predictions.csv and no manifest (not a valid artifact); a plain re-run finishes the job."""
    from cxrad.artifacts import PARTIAL_MARKER, is_valid

    folder = _inputs(tmp_path / "in", 7)
    out = tmp_path / "pred"
    r = subprocess.run([sys.executable, "-c", KILL_AFTER_TWO_CHUNKS, str(tiny_run["run"]), str(folder), str(out)],
                       capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (out / "predictions.csv").exists() and not (out / "manifest.json").exists()
    assert (out / PARTIAL_MARKER).exists() and not is_valid(out, "predictions")
    (partial,) = out.glob(".predictions.csv.*.tmp")
    assert len(partial.read_text().splitlines()) == 1 + 4      # header + two chunks of two, streamed to disk

    r = subprocess.run([sys.executable, "-m", "cxrad.cli", "--no-progress", "predict", tiny_run["run"], folder,
                        "--out", out, "--chunk-size", "2", "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert is_valid(out, "predictions") and not (out / PARTIAL_MARKER).exists()
    assert [row["path"] for row in _rows(out)] == [str(p) for p in sorted(folder.iterdir())]
    assert not list(out.glob(".*.tmp"))                        # the killed attempt's temporary file is gone
    assert len(list((out / "overlays").iterdir())) == 7


def _predict_summary(cli, run: Path, out: Path) -> dict:
    code, stdout, stderr = cli("predict", run, SAMPLE / "dicom", "--out", out, "--no-overlays", "--device", "cpu")
    assert code == 0, stderr
    return json.loads((out / "manifest.json").read_text())["summary"]


def test_predict_threshold_follows_retrained_asr_net(cli, tmp_path):
    """Issue 19 item 1. `cxrad evaluate` before `cxrad refine`: its metrics have no R_* scores, and
    predict decides by R_dual with a threshold computed now. Evaluated again: predict takes the
    evaluation's thresholds. After `cxrad refine --force` (a retrained ASR-Net) the evaluation is
    stale: predict no longer uses eval/metrics.json."""
    config = tiny_config(tmp_path, run_name="stale", epochs=1)
    work = tmp_path / "work"
    stages = [a for s in ("prepare", "train-ensemble", "synthesize", "score", "evaluate") for a in ("--stage", s)]
    code, _, stderr = cli("run", config, "--workdir", work, *stages)
    assert code == 0, stderr
    run = work / "runs" / "stale"
    metrics = run / "eval" / "metrics.json"
    assert "R_dual" not in json.loads(metrics.read_text())["scores"]

    code, _, stderr = cli("refine", run, "--inputs", "dual", "--epochs", "1")
    assert code == 0, stderr
    s = _predict_summary(cli, run, tmp_path / "after-refine")
    assert s["decision_score"] == "R_dual"
    assert not s["threshold_source"].startswith("cxrad evaluate"), s["threshold_source"]
    assert "normal training images" in s["threshold_source"]

    code, _, stderr = cli("evaluate", run, "--device", "cpu")
    assert code == 0, stderr
    evaluated = json.loads(metrics.read_text())["scores"]["R_dual"]["threshold"]
    s = _predict_summary(cli, run, tmp_path / "evaluated")
    assert s["decision_score"] == "R_dual" and s["threshold_source"].startswith("cxrad evaluate")
    assert s["threshold"] == evaluated

    code, _, stderr = cli("refine", run, "--inputs", "dual", "--epochs", "1", "--seed", "1", "--force")
    assert code == 0, stderr
    s = _predict_summary(cli, run, tmp_path / "after-force")
    assert s["decision_score"] == "R_dual"
    assert not s["threshold_source"].startswith("cxrad evaluate"), s["threshold_source"]
    assert s["threshold"] != evaluated
    assert json.loads(metrics.read_text())["scores"]["R_dual"]["threshold"] == evaluated   # left as it was
