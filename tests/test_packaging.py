"""The Dockerfile and CI install exactly what pyproject.toml declares."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, 1)[0].strip().lower()


def test_dockerfile_installs_the_project_with_its_declared_extras_only():
    text = (REPO / "Dockerfile").read_text()
    installs = re.findall(r"pip install ([^\n&]+)", text)
    assert installs, "Dockerfile has no pip install line"
    project = _pyproject()["project"]
    extras = set(project["optional-dependencies"])
    for line in installs:
        for arg in line.split():
            arg = arg.strip("'\"")
            if arg.startswith("-"):
                continue
            m = re.fullmatch(r"\.(?:\[([\w,]+)\])?", arg)
            assert m, f"Dockerfile installs {arg!r}, which is not the project itself; add it to pyproject.toml"
            assert set((m.group(1) or "").split(",")) - {""} <= extras
    assert re.search(r'ENTRYPOINT \["cxrad"\]', text) and re.search(r'CMD \["--help"\]', text)
    # torch comes from the base image; its version must satisfy the project's range
    base = re.search(r"FROM pytorch/pytorch:(\d+)\.(\d+)", text)
    torch_req = next(r for r in project["dependencies"] if _name(r) == "torch")
    lo = re.search(r">=(\d+)\.(\d+)", torch_req)
    assert (int(base.group(1)), int(base.group(2))) >= (int(lo.group(1)), int(lo.group(2)))


def test_declared_dependencies_are_the_fields_own():
    deps = {_name(r) for r in _pyproject()["project"]["dependencies"]}
    assert {"torch", "typer", "rich", "numpy", "h5py", "pydicom", "pillow", "scikit-learn", "matplotlib"} <= deps


def test_ci_runs_the_readme_test_line():
    readme = (REPO / "README.md").read_text()
    lines = [l for l in readme.splitlines() if l.startswith('pip install -e ".[test]"')]
    assert len(lines) == 1
    ci = (REPO / ".ci" / "run").read_text()
    assert "torch==2.13.0" in ci and "README.md" in ci
