"""`cxrad inspect`: an artifact's manifest plus a kind-specific summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from cxrad import methods
from cxrad.artifacts import MANIFEST_NAME, read_manifest
from cxrad.errors import CxradError
from cxrad.io.store import summarize_prepared
from cxrad.report.summaries import summarize_compare, summarize_eval, summarize_maps, summarize_predictions

# generic kind -> function taking the artifact folder and returning a JSON-able summary dict;
# a method's own kinds (DDAD: synth, refine) come from the method (cxrad/methods/base.py)
SUMMARIZERS: dict[str, Callable[[Path], dict]] = {
    "prepared": summarize_prepared,
    "maps": summarize_maps,
    "eval": summarize_eval,
    "predictions": summarize_predictions,
    "compare": summarize_compare,
}


def inspect_artifact(path: str | Path) -> dict[str, Any]:
    """Return ``{"path", "manifest", "summary"}`` for any cxrad artifact folder (or a file in one)."""
    folder = Path(path)
    if folder.is_file():
        if not (folder.parent / MANIFEST_NAME).is_file():
            raise CxradError(f"{folder}: is a file, not a cxrad artifact folder (a folder with a {MANIFEST_NAME}, "
                             "written by a cxrad stage); pass such a folder.")
        folder = folder.parent
    manifest = read_manifest(folder)
    summary: dict[str, Any] = {}
    summarize = SUMMARIZERS.get(manifest["kind"]) or methods.summarizer(manifest["kind"])
    if summarize is not None:
        summary = summarize(folder)
    return {"path": str(folder.resolve()), "manifest": manifest, "summary": summary}


def render_text(result: dict[str, Any]) -> str:
    m = result["manifest"]
    lines = [
        f"{result['path']}",
        f"  kind: {m['kind']}  (schema {m['schema_version']}, cxrad {m['cxrad_version']}, created {m['created']})",
        f"  host: {m['runtime'].get('host')}  device: {m['runtime'].get('device', '-')}",
    ]
    if m.get("timings_s"):
        lines.append("  timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in m["timings_s"].items()
                                                   if isinstance(v, (int, float))))
    for name, rec in m.get("inputs", {}).items():
        if isinstance(rec, dict) and "path" in rec:
            lines.append(f"  input {name}: {rec['path']}")
    lines.append("  config: " + json.dumps(m.get("config", {}), sort_keys=True))
    for key, value in result.get("summary", {}).items():
        lines.append(f"  {key}: {json.dumps(value) if not isinstance(value, str) else value}")
    return "\n".join(lines)
