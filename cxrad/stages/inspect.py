"""`cxrad inspect`: an artifact's manifest plus a kind-specific summary."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from cxrad.artifacts import read_manifest

# kind -> "module:function" taking the artifact folder and returning a JSON-able summary dict.
SUMMARIZERS = {
    "prepared": "cxrad.io.store:summarize_prepared",
    "maps": "cxrad.stages.score:summarize_maps",
    "synth": "cxrad.stages.synthesize:summarize_synth",
    "refine": "cxrad.stages.refine:summarize_refine",
    "eval": "cxrad.stages.evaluate:summarize_eval",
    "predictions": "cxrad.stages.predict:summarize_predictions",
}


def inspect_artifact(path: str | Path) -> dict[str, Any]:
    """Return ``{"path", "manifest", "summary"}`` for any cxrad artifact folder (or a file in one)."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    manifest = read_manifest(folder)
    summary: dict[str, Any] = {}
    target = SUMMARIZERS.get(manifest["kind"])
    if target:
        mod, fn = target.split(":")
        summary = getattr(importlib.import_module(mod), fn)(folder)
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
