"""The import graph the method interface promises: generic stages never reach into a method, methods
never reach into the stages or `cxrad run`, and DDAD's stage commands stay independent."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cxrad"
STAGES = PACKAGE / "stages"
METHODS = PACKAGE / "methods"
DDAD_COMMANDS = ("train_ensemble", "synthesize", "refine")
ALLOWED_METHOD_MODULES = {"cxrad.methods", "cxrad.methods.base"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (top level and inside functions), as absolute dotted names;
    ``from a import b`` yields ``a`` and ``a.b`` (b may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _is_submodule(name: str) -> bool:
    """Whether dotted ``name`` is a module or package of this source tree."""
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_the_scan_sees_imports():
    """Guard against a vacuous pass: the scanner finds what evaluate.py imports."""
    found = _imports(STAGES / "evaluate.py")
    assert "cxrad.methods.base" in found and "cxrad.scoring" in found
    assert "cxrad.methods.ddad.refine" in _imports(METHODS / "ddad" / "method.py")
    assert _is_submodule("cxrad.methods.ddad") and not _is_submodule("cxrad.methods.get")


@pytest.mark.parametrize("path", _modules(STAGES), ids=lambda p: p.name)
def test_stages_import_no_other_stage_and_no_method_package(path):
    me = _module_name(path)
    for name in sorted(_imports(path)):
        if not _is_submodule(name):
            continue  # a function or class imported from a module
        if _under(name, "cxrad.stages"):
            assert name in ("cxrad.stages", me), f"{me} imports the stage module {name}"
        if _under(name, "cxrad.methods"):
            assert name in ALLOWED_METHOD_MODULES, f"{me} imports {name}; stages reach methods only via " \
                                                   "cxrad.methods / cxrad.methods.base"


@pytest.mark.parametrize("path", _modules(METHODS), ids=lambda p: str(p.relative_to(METHODS)))
def test_methods_import_no_stage_and_not_the_pipeline(path):
    me = _module_name(path)
    for name in sorted(_imports(path)):
        assert not _under(name, "cxrad.stages"), f"{me} imports {name}"
        assert not _under(name, "cxrad.pipeline"), f"{me} imports {name}"


@pytest.mark.parametrize("command", DDAD_COMMANDS)
def test_ddad_stage_commands_do_not_import_each_other(command):
    imported = _imports(METHODS / "ddad" / f"{command}.py")
    for other in DDAD_COMMANDS:
        if other != command:
            assert not any(_under(name, f"cxrad.methods.ddad.{other}") for name in imported), \
                f"cxrad.methods.ddad.{command} imports cxrad.methods.ddad.{other}"


def test_generic_stages_load_no_method_code():
    code = textwrap.dedent("""
        import sys
        import cxrad.stages.evaluate, cxrad.stages.predict, cxrad.stages.score
        loaded = sorted(k for k in sys.modules if k.startswith("cxrad.methods.ddad"))
        assert not loaded, loaded
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# --------------------------------------------------------------------------------------------
# labelled anomalies: only a weakly supervised method reads them
# --------------------------------------------------------------------------------------------
READS_LABELLED_ANOMALIES = (METHODS / "wscxr",)   # packages allowed to pass labelled_anomalies=True
GUARD_MODULE = PACKAGE / "io" / "store.py"       # defines the guard (its own keyword defaults to False)


def _labelled_anomaly_reads(path: Path) -> list[int]:
    """Lines of calls in ``path`` that pass ``labelled_anomalies`` as anything but the constant False
    (True, a variable, ``**kwargs`` that could hold it)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "labelled_anomalies" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                lines.append(node.lineno)
    return lines


def test_the_anomaly_scan_sees_a_read(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("load_split(p, 'anomaly', labelled_anomalies=True)\nload_split(p, 'normal', "
                     "labelled_anomalies=False)\nf(labelled_anomalies=flag)\n")
    assert _labelled_anomaly_reads(probe) == [1, 3]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_a_weakly_supervised_method_reads_labelled_anomalies(path):
    if path == GUARD_MODULE or any(folder in path.parents for folder in READS_LABELLED_ANOMALIES):
        return
    assert not _labelled_anomaly_reads(path), f"{path.relative_to(PACKAGE)} passes labelled_anomalies " \
                                              "(only cxrad/methods/wscxr/ may read the labelled anomalies)"
