"""Hostile option and config values (issue 19): every bad value is refused before any work and before
anything is deleted, in one line naming the option (command line) or the file and key (TOML), with
no traceback; `--dry-run` checks them all. Also: run and data names that would leave --workdir,
`inspect` of a plain file, and the type checks of StageConfig.validate()."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from cxrad.config import EvaluateConfig, PrepareConfig, ScoreConfig, identity_digest, replace_known
from cxrad.errors import CxradError
from cxrad.methods.ddad.config import EnsembleConfig, RefineConfig, SynthConfig

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
CLI_FLAG = re.compile(r"(^|\s)--[a-z]")


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(code: int, out: str, err: str, *names: str) -> str:
    """The refusal: a non-zero exit code, one `cxrad: error:` line naming every one of ``names``, no
    traceback."""
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cxrad: error: "), err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def run_copy(tiny_run, tmp_path_factory) -> Path:
    """A copy of the finished tiny run (its prepared data stays shared): refused commands on it must
    change nothing."""
    run = tmp_path_factory.mktemp("hostile-config") / "run"
    shutil.copytree(tiny_run["run"], run)
    return run


# ---------------------------------------------------------------------------------------------
# command-line values: refused before the output folder is touched (--force deletes nothing)
# ---------------------------------------------------------------------------------------------
STAGE_CASES = {
    "score batch 0": (["score", "{run}", "--batch-size", "0", "--force"], "--batch-size 0", "maps"),
    "score device": (["score", "{run}", "--device", "gpu", "--force"], "--device gpu", "maps"),
    "synthesize epochs 0": (["synthesize", "{run}", "--epochs", "0", "--force"], "--epochs 0", "synth"),
    "refine epochs -3": (["refine", "{run}", "--epochs", "-3", "--force"], "--epochs -3", "refine/dual"),
    "refine batch 0": (["refine", "{run}", "--batch-size", "0", "--force"], "--batch-size 0", "refine/dual"),
    "refine lr -1": (["refine", "{run}", "--inputs", "intra", "--lr", "-1", "--force"], "--lr -1", "refine/intra"),
    "refine ema 1": (["refine", "{run}", "--ema-decay", "1", "--resume"], "--ema-decay 1", "refine/dual"),
    "evaluate percentile 150": (["evaluate", "{run}", "--threshold-percentile", "150", "--force"],
                                "--threshold-percentile 150", "eval"),
    "evaluate percentile 0": (["evaluate", "{run}", "--threshold-percentile", "0", "--force"],
                              "--threshold-percentile 0", "eval"),
    "train-ensemble epochs 0": (["train-ensemble", "{prepared}", "--run", "{run}", "--members", "2", "--epochs", "0",
                                 "--force"], "--epochs 0", "ensemble"),
    "train-ensemble lr 0": (["train-ensemble", "{prepared}", "--run", "{run}", "--members", "2", "--lr", "0",
                             "--force"], "--lr 0", "ensemble"),
}


@pytest.mark.parametrize("case", list(STAGE_CASES))
def test_bad_option_is_refused_before_anything_is_deleted(cli, run_copy, tiny_run, case):
    args, named, folder = STAGE_CASES[case]
    args = [a.format(run=run_copy, prepared=tiny_run["prepared"]) for a in args]
    manifest = run_copy / folder / "manifest.json"
    assert manifest.is_file()
    before = _snapshot(run_copy)
    _one_line(*cli(*args), named)
    assert manifest.is_file(), "a refused --force deleted the manifest"
    assert _snapshot(run_copy) == before


def test_bad_prepare_option_keeps_the_prepared_data(cli, tiny_run, tmp_path):
    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_run["prepared"], prepared)
    before = _snapshot(prepared)
    for option, value in (("--size", "4"), ("--test-fraction", "1.5"), ("--anomaly-rate", "-0.1")):
        _one_line(*cli("prepare", SAMPLE, "--out", prepared, "--labels", SAMPLE / "labels.csv", option, value,
                       "--force"), option)
    assert _snapshot(prepared) == before


def test_bad_predict_option_writes_nothing(cli, tiny_run, tmp_path):
    out = tmp_path / "pred"
    _one_line(*cli("predict", tiny_run["run"], SAMPLE, "--out", out, "--num-shards", "2", "--shard-id", "5"),
              "--num-shards 2 --shard-id 5")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# `cxrad run` TOML values: the file and the key are named, at load (before any stage, --dry-run too)
# ---------------------------------------------------------------------------------------------
BASE = {
    "data": {"source": f'"{SAMPLE.as_posix()}"', "labels": f'"{SAMPLE.as_posix()}/labels.csv"',
             "name": '"sample32"'},
    "run": {"name": '"tiny"'},
    "prepare": {"size": "32"},
    "ensemble": {"members": "2", "epochs": "1", "batch_size": "16"},
    "synthesize": {"epochs": "2"},
    "refine": {"epochs": "1"},
}

# case -> (table, key, TOML value, what the message says after "[table] key = value")
TOML_CASES = {
    "percentile 150": ("evaluate", "threshold_percentile", "150", ": must lie in (0, 100)"),
    "members 2.5": ("ensemble", "members", "2.5", ": must be an integer"),
    "members 1": ("ensemble", "members", "1", ": the intra-discrepancy needs K >= 2 members"),
    "members true": ("ensemble", "members", "true", ": must be an integer"),
    "epochs string": ("ensemble", "epochs", '"2"', ": must be an integer"),
    "lr string": ("ensemble", "lr", '"fast"', ": must be a finite number"),
    "lr nan": ("ensemble", "lr", "nan", ": must be a finite number"),
    "lr negative": ("ensemble", "lr", "-1", ": must lie in (0, inf]"),
    "betas short": ("ensemble", "betas", "[0.5]", ": must be a list of 2 finite numbers"),
    "paired_init int": ("ensemble", "paired_init", "1", ": must be true or false"),
    "backbone": ("ensemble", "backbone", '"vae"', ": use one of ae, memae, aeu"),
    "ensemble device": ("ensemble", "device", '"gpu"', ": not understood"),
    "source int": ("data", "source", "5", ": must be a path"),
    "labels list": ("data", "labels", '["a.csv"]', ": must be a path"),
    "percentiles one": ("prepare", "percentiles", "[1]", ": must be a list of 2 finite numbers"),
    "percentiles order": ("prepare", "percentiles", "[60, 10]", ": need 0 <= low < high <= 100"),
    "size 4": ("prepare", "size", "4", ": use a side between 8 and 4096 pixels"),
    "allow_modality": ("prepare", "allow_modality", '["MR", 3]', ": must be a list of strings"),
    "synth epochs 0": ("synthesize", "epochs", "0", ": must be at least 1"),
    "centre_range": ("synthesize", "centre_range", "[0.9, 0.1]", ": need 0 <= low < high <= 1"),
    "refine batch 0": ("refine", "batch_size", "0", ": must be at least 1"),
    "refine lr -1": ("refine", "lr", "-1", ": must lie in (0, inf]"),
    "refine epochs -3": ("refine", "epochs", "-3", ": must be at least 1"),
    "refine epochs beyond recipes": ("refine", "epochs", "5", ": refine reads FPI recipes for every epoch"),
    "level_jitter": ("refine", "level_jitter", "[2.0, 1.0]", ": need 0 < low <= high"),
    "score batch 0": ("score", "batch_size", "0", ": must be at least 1"),
    "score split": ("score", "split", '"training"', ": use one of test, val, normal, unlabeled, all"),
    "evaluate device": ("evaluate", "device", '"cuda:x"', ": not understood"),
    "refine_inputs string": ("run", "refine_inputs", '"dual"', ': must be a list, e.g. ["dual"]'),
    "refine_inputs unknown": ("run", "refine_inputs", '["dual", "both"]', ': holds "both"'),
    "refine_inputs twice": ("run", "refine_inputs", '["dual", "dual"]', ": names an input twice"),
    "run name parent": ("run", "name", '"../../../x"', ": must be one folder name"),
    "run name absolute": ("run", "name", '"/tmp/x"', ": must be one folder name"),
    "run name dot": ("run", "name", '".."', ": must be one folder name"),
    "run name empty": ("run", "name", '""', ": must be one folder name"),
    "run name int": ("run", "name", "7", ": must be a folder name"),
    "data name parent": ("data", "name", '"../elsewhere"', ": must be one folder name"),
    "method name int": ("method", "name", "3", ": must be a string"),
}


def _toml(path: Path, table: str, key: str, value: str) -> Path:
    tables = {name: dict(keys) for name, keys in BASE.items()}
    tables.setdefault(table, {})[key] = value
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
                            for name, keys in tables.items()))
    return path


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("case", list(TOML_CASES))
def test_bad_toml_value_names_file_and_key(cli, tmp_path, case, dry_run):
    table, key, value, says = TOML_CASES[case]
    config = _toml(tmp_path / "cfg.toml", table, key, value)
    work = tmp_path / "work"
    line = _one_line(*cli("run", config, "--workdir", work, *(["--dry-run"] if dry_run else [])),
                     f"{config}: [{table}] {key}", says)
    assert f"[{table}] {key} = {value}" in line, line
    assert not CLI_FLAG.search(line.split(f"{config}: ", 1)[1]), f"names a command-line option: {line}"
    assert not work.exists(), "a config error must stop `cxrad run` before any stage"
    assert not (tmp_path.parent / "x").exists() and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("text, says", [
    ("[data]\nsource = \"x\"\n[ensemble]\nepoch = 3\n", "[ensemble] unknown EnsembleConfig option(s) epoch"),
    ("[data]\nsource = \"x\"\n[ensembles]\nepochs = 3\n", "unknown table(s) [ensembles]"),
    ("[data]\nsource = \"x\"\nnoise = 1\n", "unknown key(s) in [data]: noise"),
    ("ensemble = 3\n[data]\nsource = \"x\"\n", "ensemble = 3 is not a table"),
    ("[data]\nsource = \"x\"\n[method]\nname = \"other\"\n", "method 'other' is not known"),
    ("[run]\nname = \"a\"\n", "[data] needs `source"),
])
def test_toml_structure_errors_name_the_file(cli, tmp_path, text, says):
    config = tmp_path / "cfg.toml"
    config.write_text(text)
    line = _one_line(*cli("run", config, "--workdir", tmp_path / "work", "--dry-run"), f"{config}: ")
    assert says in line, line


def test_data_name_from_a_root_source_is_refused(cli, tmp_path):
    config = tmp_path / "cfg.toml"
    config.write_text("[data]\nsource = \"/\"\n")
    _one_line(*cli("run", config, "--workdir", tmp_path / "work", "--dry-run"), "[data] name", "one folder name")


def test_an_int_in_a_float_field_is_the_same_config(tmp_path):
    from cxrad.pipeline import load_config

    config = _toml(tmp_path / "cfg.toml", "ensemble", "lr", "1")
    lr = load_config(config).method_tables["ensemble"].lr
    assert lr == 1.0 and isinstance(lr, float)
    assert identity_digest(replace_known(EnsembleConfig(), {"lr": 1})) == identity_digest(EnsembleConfig(lr=1.0))


# ---------------------------------------------------------------------------------------------
# StageConfig.validate(): types from the annotations, for Python callers too
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg, says", [
    (EnsembleConfig(members=2.5), "--members 2.5: must be an integer."),
    (EnsembleConfig(epochs="2"), "--epochs '2': must be an integer."),
    (ScoreConfig(batch_size=True), "--batch-size True: must be an integer."),
    (RefineConfig(precise_bn=1), "--precise-bn 1: must be true or false."),
    (RefineConfig(lr=float("inf")), "--lr inf: must be a finite number."),
    (SynthConfig(centre_range=(0.1,)), "--centre-range (0.1,): must be a list of 2 finite numbers."),
    (PrepareConfig(workers=1.5), "--workers 1.5: must be an integer."),
    (PrepareConfig(allow_modality="MR"), "--allow-modality 'MR': must be a list of strings."),
    (EvaluateConfig(split=["test"]), "--split ['test']: use one of test, val, normal, unlabeled."),
    (ScoreConfig(device="cuda:one"), "--device cuda:one: not understood; use auto, cpu, cuda or cuda:N."),
])
def test_validate_checks_types(cfg, says):
    with pytest.raises(CxradError) as info:
        cfg.validate()
    assert str(info.value) == says


def test_validate_normalises_lists_and_ints():
    cfg = PrepareConfig(percentiles=[1, 99], allow_modality=["MR"]).validate()
    assert cfg.percentiles == (1.0, 99.0) and isinstance(cfg.percentiles[0], float)
    assert cfg.allow_modality == ("MR",)
    assert PrepareConfig(workers=None).validate().workers is None
    assert ScoreConfig(device=" CUDA:1 ").validate().device == " CUDA:1 "  # spelled like resolve_device reads it


# ---------------------------------------------------------------------------------------------
# inspect of a plain file
# ---------------------------------------------------------------------------------------------
def test_inspect_plain_file_names_it(cli, tmp_path, tiny_run):
    text = tmp_path / "afile.txt"
    text.write_text("hello\n")
    line = _one_line(*cli("inspect", text), str(text), "not a cxrad artifact folder")
    assert "`.`" not in line
    code, out, err = cli("inspect", tiny_run["run"] / "maps" / "test.h5")   # a file inside an artifact: its folder
    assert code == 0 and "kind: maps" in out, err


# ---------------------------------------------------------------------------------------------
# a damaged model is refused before --force deletes the old maps or evaluation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage, folder", [("score", "maps"), ("evaluate", "eval")])
def test_damaged_member_is_named_before_force_deletes(cli, tiny_run, tmp_path, stage, folder):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    member = run / "ensemble" / "ndm" / "member-0.pt"
    member.write_bytes(bytes(member.stat().st_size))   # same size: the manifest's size check passes
    before = _snapshot(run)
    _one_line(*cli(stage, run, "--force"), member, "damaged")
    assert (run / folder / "manifest.json").is_file()
    assert _snapshot(run) == before
