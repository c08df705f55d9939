"""`cxrad compare` on real tiny runs (a DDAD-ASR pipeline run and toy-method runs on sample_data), and
the confidence intervals `cxrad evaluate` reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE
from sklearn.metrics import average_precision_score, roc_auc_score
from toy_method import MEAN_FILE, ToyMethod

from cxrad import methods
from cxrad.artifacts import input_record, read_manifest, sha256_file, write_manifest
from cxrad.config import EvaluateConfig, PrepareConfig
from cxrad.io.store import load_split, preprocessing_of
from cxrad.metrics_ci import auc_interval, delong, paired_delong_p
from cxrad.runs import open_run
from cxrad.stages.compare import _saw
from cxrad.stages.evaluate import evaluate
from cxrad.stages.prepare import prepare


class WeakToy(ToyMethod):
    """The toy, declaring that it trained on the labelled anomalies too (as WSCXR does)."""

    name = "weaktoy"

    def training_sets(self, run):
        return ("normal", "anomaly")


def _fit(prepared: Path, run: Path, method: str = "toy", **tables) -> Path:
    run.mkdir(parents=True)
    np.save(run / MEAN_FILE, load_split(prepared, "normal").images.mean(axis=0).astype(np.float32))
    write_manifest(run, "run", {"method": method, "preprocessing": preprocessing_of(prepared), **tables},
                   inputs={"prepared": input_record(prepared)}, outputs=[MEAN_FILE], extra={"method": method})
    return run


def _labels(tmp: Path, name: str, edit) -> Path:
    with open(SAMPLE / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = edit(rows)
    path = tmp / f"{name}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """tiny_run (DDAD-ASR) plus evaluated toy runs: two on its prepared data, one weakly supervised on
    data whose Du gave 2 abnormal images to the anomaly set (same test images), one on data with 3
    fewer test images."""
    methods.register("toy", ToyMethod())
    methods.register("weaktoy", WeakToy())
    root = tmp_path_factory.mktemp("compare")
    cfg = PrepareConfig(size=32, workers=2)

    def to_anomaly(rows):
        moved = [r for r in rows if r["split"] == "unlabeled" and r["label"] == "1"][:2]
        return [{**r, "split": "anomaly"} if r in moved else r for r in rows]

    weak = prepare(SAMPLE, root / "weak", PrepareConfig(size=32, workers=2, anomaly_shots=2),
                   labels=_labels(root, "weak", to_anomaly))
    fewer = prepare(SAMPLE, root / "fewer", cfg, labels=_labels(root, "fewer", lambda rows: rows[:-3]))
    out = {"ddad": tiny_run["run"], "toy_a": _fit(tiny_run["prepared"], root / "toy_a"),
           "toy_b": _fit(tiny_run["prepared"], root / "toy_b"), "weak": _fit(weak, root / "weak_run", "weaktoy"),
           "fewer": _fit(fewer, root / "fewer_run"), "unevaluated": _fit(tiny_run["prepared"], root / "toy_c"),
           "weak_1shot": _fit(weak, root / "weak_1shot", "weaktoy", weaktoy={"shots": 1})}
    for name in ("toy_a", "toy_b", "weak", "fewer"):
        evaluate(out[name], EvaluateConfig(device="cpu"))
    yield out
    methods._REGISTRY.pop("toy", None)
    methods._REGISTRY.pop("weaktoy", None)


def _scores_csv(run: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with open(run / "eval" / "scores.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["id"])
    names = [k for k in rows[0] if k not in ("id", "label")]
    return np.array([int(r["label"]) for r in rows]), {n: np.array([float(r[n]) for r in rows]) for n in names}


def test_evaluate_reports_intervals(tiny_run):
    eval_dir = tiny_run["run"] / "eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    labels, scores = _scores_csv(tiny_run["run"])
    assert metrics["intervals"]["level"] == 0.95 and "DeLong" in metrics["intervals"]["auc"]
    for name, m in metrics["scores"].items():
        aucs, cov = delong(labels, scores[name])
        assert m["auc"] == pytest.approx(aucs[0], abs=1e-12)
        assert m["auc_ci"] == pytest.approx(list(auc_interval(aucs[0], cov[0, 0])), abs=1e-12)
        assert m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1] and m["ap_ci"][0] <= m["ap"] <= m["ap_ci"][1]
    from cxrad.report.summaries import summarize_eval

    shown = summarize_eval(eval_dir)     # what `cxrad inspect RUN/eval` prints
    assert all(shown[k]["auc_ci"] == [round(100 * x, 2) for x in m["auc_ci"]] for k, m in metrics["scores"].items())
    table = (eval_dir / "metrics.md").read_text()
    assert "AUC [95 % CI]" in table and "stratified bootstrap" in table
    first = next(iter(metrics["scores"].values()))
    assert f"{100 * first['auc']:.1f} [{100 * first['auc_ci'][0]:.1f}, {100 * first['auc_ci'][1]:.1f}]" in table


def test_compare_two_methods_and_a_weakly_supervised_run(runs, tmp_path, cli):
    out = tmp_path / "cmp"
    code, stdout, err = cli("compare", runs["ddad"], runs["toy_a"], runs["toy_b"], runs["weak"], "--out", out)
    assert code == 0, err
    result = json.loads((out / "compare.json").read_text())
    assert {p.name for p in out.iterdir()} >= {"compare.md", "compare.json", "roc.png", "manifest.json"}
    ddad_metrics = json.loads((runs["ddad"] / "eval" / "metrics.json").read_text())
    assert [(r["run"], r["score"]) for r in result["rows"]] == \
        [(runs["ddad"].name, s) for s in ddad_metrics["scores"]] + [(n, "D_mean") for n in ("toy_a", "toy_b",
                                                                                           "weak_run")]
    assert result["n_normal"] == 20 and result["n_abnormal"] == 45
    # every number recomputed from the stored scores; the thresholded ones are evaluate's own
    labels, _ = _scores_csv(runs["ddad"])
    all_scores = {(n.name, k): v for n in (runs["ddad"], runs["toy_a"], runs["toy_b"], runs["weak"])
                  for k, v in _scores_csv(n)[1].items()}
    best = max(result["rows"], key=lambda r: r["auc"])
    assert result["best"] == {"run": best["run"], "score": best["score"]} and best["p_vs_best"] == 1.0
    for row in result["rows"]:
        s = all_scores[(Path(row["run_path"]).name, row["score"])]
        assert row["auc"] == pytest.approx(roc_auc_score(labels, s), abs=1e-12)
        assert row["ap"] == pytest.approx(average_precision_score(labels, s), abs=1e-12)
        assert row["auc_ci"][0] <= row["auc"] <= row["auc_ci"][1]
        assert row["p_vs_best"] == pytest.approx(
            paired_delong_p(labels, s, all_scores[(Path(best["run_path"]).name, best["score"])]), abs=1e-9)
        evaluated = json.loads((Path(row["run_path"]) / "eval" / "metrics.json").read_text())["scores"][row["score"]]
        assert row["auc_ci"] == pytest.approx(evaluated["auc_ci"], abs=1e-12)   # one DeLong, in both stages
        assert row["ap_ci"] == pytest.approx(evaluated["ap_ci"], abs=1e-12)     # same seed and resamples
        assert row["specificity"] == evaluated["specificity"] and row["threshold"] == evaluated["threshold"]
    # the two identical toy runs: same AUC, and p = 1 between them; they form one repeated configuration
    toy = {r["run"]: r for r in result["rows"] if r["method"] == "toy"}
    assert toy["toy_a"]["auc"] == toy["toy_b"]["auc"]
    assert result["groups"] == [{"method": "toy", "score": "D_mean", "saw": "Dn 30", "runs": ["toy_a", "toy_b"],
                                 "auc_mean": toy["toy_a"]["auc"], "auc_sd": 0.0, "ap_mean": toy["toy_a"]["ap"],
                                 "ap_sd": 0.0}]
    # what each run saw: DDAD Dn + Du, the toy Dn, the weakly supervised toy Dn + K labelled (from the manifests)
    saw = {r["run"]: r["saw"] for r in result["runs"]}
    assert saw[runs["ddad"].name]["text"] == "Dn 30 + Du 25" and saw["toy_a"]["text"] == "Dn 30"
    assert saw["weak_run"]["text"] == "Dn 30 + 2 labelled abnormal"
    # a run that trained on the first `shots` of them says so (Method.labelled_anomalies_used)
    assert _saw(open_run(runs["weak_1shot"]))["text"] == "Dn 30 + 1 labelled abnormal"
    # report and provenance
    md = (out / "compare.md").read_text()
    assert "| weak_run | weaktoy | **D_mean** | Dn 30 + 2 labelled abnormal |" in md and "p vs best" in md
    manifest = read_manifest(out, "compare", verify=True)
    assert manifest["inputs"][f"eval:{runs['toy_a'].name}"]["manifest_sha256"] == \
        sha256_file(runs["toy_a"] / "eval" / "manifest.json")
    assert len(manifest["inputs"]) == 4
    code, stdout, _ = cli("inspect", out, "--json")
    summary = json.loads(stdout)["summary"]
    assert code == 0 and len(summary) == len(result["rows"])
    assert summary[f"{best['run']} {best['score']}"]["p_vs_best"] == 1.0
    # a re-run is a no-op; a re-evaluated run makes the comparison redo itself
    before = (out / "manifest.json").read_text()
    code, _, err = cli("compare", runs["ddad"], runs["toy_a"], runs["toy_b"], runs["weak"], "--out", out)
    assert code == 0 and (out / "manifest.json").read_text() == before
    evaluate(runs["toy_b"], EvaluateConfig(device="cpu"), force=True)
    code, _, err = cli("compare", runs["ddad"], runs["toy_a"], runs["toy_b"], runs["weak"], "--out", out)
    assert code == 0, err
    assert read_manifest(out, "compare")["inputs"]["eval:toy_b"]["manifest_sha256"] == \
        sha256_file(runs["toy_b"] / "eval" / "manifest.json")


def _error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("cxrad: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_compare_refuses_other_test_sets_and_unevaluated_runs(runs, tmp_path, cli):
    code, _, err = cli("compare", runs["toy_a"], runs["fewer"], "--out", tmp_path / "a")
    line = _error(err)
    assert code == 2 and str(runs["toy_a"]) in line and str(runs["fewer"]) in line
    assert "different test images (65 vs 62 images" in line
    code, _, err = cli("compare", runs["toy_a"], runs["unevaluated"], "--out", tmp_path / "b")
    line = _error(err)
    assert code == 2 and f"{runs['unevaluated']}: not evaluated" in line and "cxrad evaluate" in line
    code, _, err = cli("compare", runs["toy_a"], runs["toy_a"], "--out", tmp_path / "c")
    assert code == 2 and "given twice" in _error(err)
    code, _, err = cli("compare", runs["toy_a"], "--split", "val", "--out", tmp_path / "d")
    assert code == 2 and "evaluated on split 'test', not 'val'" in _error(err)
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_run_labels_are_the_shortest_distinct_path_tails():
    from cxrad.stages.compare import _labels_of

    assert _labels_of([Path("/w/a/runs/x"), Path("/w/b/runs/x"), Path("/w/b/runs/y")]) == \
        ["a/runs/x", "b/runs/x", "b/runs/y"]
    assert _labels_of([Path("/w/x"), Path("/w/y")]) == ["x", "y"]


def test_an_evaluation_from_before_intervals_is_redone(runs, tiny_run, tmp_path):
    """An eval folder written by an earlier cxrad (valid manifest, no intervals in metrics.json) is not
    "up to date": `cxrad evaluate` and `cxrad run` redo it."""
    from cxrad.pipeline import _out_of_date
    from cxrad.stages.evaluate import OUTPUTS, has_intervals

    run = _fit(tiny_run["prepared"], tmp_path / "old")
    evaluate(run, EvaluateConfig(device="cpu"))
    eval_dir = run / "eval"
    old = json.loads((eval_dir / "manifest.json").read_text())
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    metrics.pop("intervals")
    for m in metrics["scores"].values():
        for key in ("auc_ci", "auc_se", "ap_ci"):
            m.pop(key)
    (eval_dir / "metrics.json").write_text(json.dumps(metrics))
    write_manifest(eval_dir, "eval", EvaluateConfig(device="cpu"), inputs=old["inputs"], outputs=list(OUTPUTS))
    assert read_manifest(eval_dir, "eval") and not has_intervals(eval_dir)
    assert _out_of_date(eval_dir, "eval", lambda: EvaluateConfig(device="cpu")) == \
        "made before evaluate reported confidence intervals"
    redone = evaluate(run, EvaluateConfig(device="cpu"))
    assert "auc_ci" in redone["scores"]["D_mean"] and has_intervals(eval_dir)
    assert _out_of_date(eval_dir, "eval", lambda: EvaluateConfig(device="cpu")) is None
