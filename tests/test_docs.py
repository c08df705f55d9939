"""The repository explains itself: docs/cli.md matches the code, and nothing points outside the repo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("DESIGN §", "../shared")


def test_cli_reference_is_current():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gen_config_reference.py"), "--check"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout


def _checked_files():
    yield REPO / "README.md"
    for folder in ("cxrad", "workflows/configs"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                yield path


def test_no_reference_to_documents_outside_the_repository():
    offenders = []
    for path in _checked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{path.relative_to(REPO)}: {s!r}" for s in FORBIDDEN if s in text]
    assert not offenders, "point to docs/ instead:\n" + "\n".join(offenders)
