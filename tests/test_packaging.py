"""What users install: the wheel built from this tree, its `cxrad` command, and the CI entry point.

The wheel is built offline (`pip wheel --no-build-isolation --no-index`) from a copy of the tree, so
the checkout gains no build/ or egg-info; it is installed with `pip install --target` and run from
there, away from the checkout.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    return _norm(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "cxrad", src / "cxrad", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "--quiet", str(src), "-w", str(tmp / "dist")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list((tmp / "dist").glob("cxrad-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a folder of its own (its dependencies come from this environment)."""
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                        "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return target


def _metadata(wheel: Path) -> tuple[list[str], str, str]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        return names, z.read(f"{dist_info}/METADATA").decode(), z.read(f"{dist_info}/entry_points.txt").decode()


def test_the_wheel_holds_every_module_and_the_package_data(wheel):
    names, _, _ = _metadata(wheel)
    expected = {p.relative_to(REPO).as_posix() for p in (REPO / "cxrad").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".toml")}
    assert "cxrad/methods/ddad/__init__.py" in expected and "cxrad/defaults/sample.toml" in expected
    missing = sorted(expected - set(names))
    assert not missing, f"not in {wheel.name}: {missing}"
    stray = sorted(n for n in names if not n.startswith(("cxrad/", "cxrad-")))
    assert not stray, f"{wheel.name} ships files outside the package: {stray}"


def test_the_wheel_declares_every_third_party_module_cxrad_imports(wheel):
    _, metadata, _ = _metadata(wheel)
    declared = {_req_name(v) for k, v in (line.split(": ", 1) for line in metadata.splitlines() if ": " in line)
                if k == "Requires-Dist"}
    imported: set[str] = set()
    for path in (REPO / "cxrad").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(m for m in imported if m not in sys.stdlib_module_names and m != "cxrad")
    dists = importlib.metadata.packages_distributions()
    undeclared = {m: dists.get(m) for m in third_party if not {_norm(d) for d in dists.get(m, [m])} & declared}
    assert not undeclared, f"cxrad imports these, but the wheel does not require them: {undeclared}"
    for req in ("torch", "numpy", "h5py", "pydicom", "pillow", "typer"):
        assert req in declared


def test_the_cxrad_command_is_the_installed_cli(wheel, installed, tmp_path):
    _, metadata, entry_points = _metadata(wheel)
    scripts = re.search(r"\[console_scripts\]\n((?:.+\n?)*)", entry_points).group(1)
    assert [s.replace(" ", "") for s in scripts.splitlines() if s.strip()] == ["cxrad=cxrad.cli:main"]
    version = re.search(r"^Version: (.+)$", metadata, re.M).group(1)
    # Run from elsewhere with only the installed copy of cxrad on the path (before this environment).
    env = dict(os.environ, PYTHONPATH=str(installed), CXRAD_NO_PROGRESS="1")
    r = subprocess.run([str(installed / "bin" / "cxrad"), "--version"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == f"cxrad {version}"
    probe = ("import importlib.metadata, json, cxrad.cli, cxrad.pipeline, cxrad.methods.ddad.train_ensemble as t;"
             "print(json.dumps([cxrad.cli.__file__, t.__file__, str(cxrad.pipeline.DEFAULT_CONFIG),"
             " cxrad.pipeline.DEFAULT_CONFIG.is_file(), cxrad.__version__]))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    cli, ddad, default_config, default_exists, module_version = __import__("json").loads(r.stdout)
    for path in (cli, ddad, default_config):
        assert Path(path).is_relative_to(installed), path
    assert default_exists and module_version == version


def test_dockerfile_installs_the_project_with_its_declared_extras_only():
    text = (REPO / "Dockerfile").read_text()
    installs = re.findall(r"pip install ([^\n&]+)", text)
    assert installs, "Dockerfile has no pip install line"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
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
    torch_req = next(r for r in project["dependencies"] if _req_name(r) == "torch")
    lo = re.search(r">=(\d+)\.(\d+)", torch_req)
    assert (int(base.group(1)), int(base.group(2))) >= (int(lo.group(1)), int(lo.group(2)))


STUB = """#!/usr/bin/env bash
echo "{name} $*" >> "$CI_CALLS"
[ "{name}" != apt-get ] || [ -z "${{CI_APT_FAILS:-}}" ] || exit 100
"""


@pytest.mark.parametrize("apt_fails", [False, True], ids=["apt-ok", "apt-fails"])
def test_ci_installs_torch_then_runs_the_readme_test_line_verbatim(tmp_path, apt_fails):
    """.ci/run against stub python/pip/apt-get that record their calls: torch first, the README's
    test line unchanged, then the linter last; a failing apt-get (no SLURM) does not stop CI."""
    readme = (REPO / "README.md").read_text()
    lines = [line for line in readme.splitlines() if line.startswith('pip install -e ".[test]"')]
    assert len(lines) == 1
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy2(REPO / ".ci" / "run", repo / ".ci" / "run")
    shutil.copy2(REPO / "README.md", repo / "README.md")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "pip", "apt-get"):
        (bin_dir / name).write_text(STUB.format(name=name))
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin", CI_CALLS=str(calls))
    if apt_fails:
        env["CI_APT_FAILS"] = "1"
    r = subprocess.run(["bash", str(repo / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    recorded = calls.read_text().splitlines()
    # the README line as bash runs it: `pip install -e ".[test]" && python -m pytest -x -q`
    test_line = [" ".join(shlex.split(part)) for part in lines[0].split("&&")]
    assert recorded[0] == "python -m pip install --quiet torch==2.13.0"
    assert recorded[-1] == "python -m ruff check .", recorded
    assert recorded[-1 - len(test_line):-1] == test_line, recorded
    apt = [c for c in recorded if c.startswith("apt-get ")]
    if os.geteuid() == 0:
        assert apt and all("slurm-wlm munge" in c for c in apt if " install " in c), recorded
    else:
        assert not apt
    if apt_fails and os.geteuid() == 0:
        assert "test_slurm real-cluster test will skip" in r.stdout + r.stderr
