"""The benchmark scripts prepare with `cxrad prepare`'s intensity default, and name min-max data as
they always did, so every record written before the percentile default can still be rerun."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from cxrad.config import PrepareConfig

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_data import intensity_tag  # noqa: E402

SCRIPTS = ["zhanglab.py", "patchcore_zhanglab.py", "patchcore_dev_study.py", "simsid_zhanglab.py",
           "wscxr_zhanglab.py", "wscxr_dev_study.py", "threshold_calibration.py"]


def test_minmax_keeps_the_old_names_and_percentile_gets_its_own():
    assert intensity_tag("minmax") == "" and intensity_tag("percentile") == "-pct"


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_preparing_script_offers_intensity_with_prepares_default(script):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())           # argparse wraps the help text
    assert "--intensity {minmax,percentile}" in text
    assert f"default: {PrepareConfig.intensity})" in text and PrepareConfig.intensity == "percentile"
