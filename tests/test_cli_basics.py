"""The CLI shell: --version, inspect, and the one-line error contract."""

from __future__ import annotations

import json
import subprocess
import sys

from cxrad import __version__


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cxrad.cli", *map(str, args)],
                          capture_output=True, text=True, **kw)


def test_version_lists_dependencies():
    r = run_cli("--version")
    assert r.returncode == 0
    assert f"cxrad {__version__}" in r.stdout
    for name in ("torch", "CUDA", "h5py", "pydicom"):
        assert name in r.stdout


def test_inspect_reports_counts(prepared_sample):
    r = run_cli("inspect", prepared_sample, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["manifest"]["kind"] == "prepared"
    assert out["summary"]["image_size"] == 64
    assert out["summary"]["sets"]["test"]["count"] == out["summary"]["sets"]["test"]["label_0"] + \
        out["summary"]["sets"]["test"]["label_1"]


def test_inspect_non_artifact_is_one_line_error(tmp_path):
    r = run_cli("inspect", tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("cxrad: error:")
    assert "Traceback" not in r.stderr


def test_usage_errors_are_click_messages_not_tracebacks(tmp_path):
    # Regression: main() imported `click` to recognise usage errors; typer >= 0.20 vendors click
    # and does not install it, so an unknown option crashed with ModuleNotFoundError.
    r = run_cli("prepare", tmp_path, "--no-such-option")
    assert r.returncode == 2
    assert "No such option" in r.stderr and "--no-such-option" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("inspect")
    assert r.returncode == 2 and "Missing argument" in r.stderr and "Traceback" not in r.stderr
