"""Discrepancy maps from a trained run: load its frozen ensembles, feed images, get maps.

Shared by `score` (maps of a split), `refine` (maps of synthetic images, on the fly) and
`evaluate`. Images go in as (N, H, W) in [0, 1] (the prepared store) and are mapped to the
network's [-1, 1] space here, the one place that knows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cxrad.artifacts import read_manifest
from cxrad.discrepancy import discrepancy_maps, image_score
from cxrad.errors import CxradError


def to_network_space(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (DESIGN §1.1)."""
    return images01 * 2.0 - 1.0


@dataclass
class RunEnsembles:
    """A run's frozen NDM and (optional) UDM, with what later stages need to know about the run."""

    run: Path
    manifest: dict[str, Any]
    prepared: Path
    backbone: str
    ndm: Any
    udm: Optional[Any]
    device: torch.device

    @torch.no_grad()
    def maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, H, W) in [-1, 1] on the device -> name -> (B, H, W) float32 maps."""
        x4 = x[:, None].float()
        ndm_out = self.ndm(x4)
        udm_out = self.udm(x4) if self.udm is not None else None
        return discrepancy_maps(x4, ndm_out, udm_out)


def run_prepared(run: Path, manifest: dict[str, Any]) -> Path:
    """The prepared artifact a run was trained on (from its input record)."""
    rec = (manifest.get("inputs") or {}).get("prepared") or (manifest.get("config") or {}).get("prepared")
    path = rec.get("path") if isinstance(rec, dict) else rec
    if not path:
        raise CxradError(f"{run}: run manifest names no prepared input; re-run `cxrad train-ensemble`.")
    return Path(path)


def _members(run: Path, module: str) -> int:
    return len(list((run / "ensemble" / module).glob("member-*.pt")))


def has_udm(run: Path) -> bool:
    """Whether the run's ensemble artifact trained a UDM (its manifest's modules, else the files)."""
    try:
        modules = read_manifest(Path(run) / "ensemble", "ensemble").get("config", {}).get("modules")
    except CxradError:
        modules = None
    if modules is not None:
        return "udm" in modules
    return _members(Path(run), "udm") > 0


def open_run(run: str | Path, device: torch.device, need_udm: bool = False, command: str = "cxrad score") -> RunEnsembles:
    """Check the run and its ensembles, load them frozen (eval mode) on ``device``.

    Raises one-line errors naming the missing step: no run / no ensembles -> `cxrad train-ensemble`;
    ``need_udm`` on a run without a UDM -> train it or use intra inputs.
    """
    run = Path(run)
    manifest = read_manifest(run, "run")
    ens_dir = run / "ensemble"
    if not (ens_dir / "manifest.json").is_file() or _members(run, "ndm") == 0:
        raise CxradError(
            f"{run}: has no trained ensembles (no {ens_dir}/manifest.json); run `cxrad train-ensemble` "
            f"before `{command}`."
        )
    read_manifest(ens_dir, "ensemble")
    if need_udm and not has_udm(run):
        raise CxradError(
            f"{run}: has no UDM ensemble, which dual inputs need; run `cxrad train-ensemble --module udm` "
            "first or use `--inputs intra`."
        )
    from cxrad.models.ensemble import load_ensemble

    cfg = manifest.get("config", {})
    ndm = load_ensemble(run, "ndm", device)
    udm = load_ensemble(run, "udm", device) if has_udm(run) else None
    for ens in (ndm, udm):
        if ens is not None:
            ens.eval()
            for p in ens.parameters():
                p.requires_grad_(False)
    return RunEnsembles(run, manifest, run_prepared(run, manifest), str(cfg.get("backbone", "ae")), ndm, udm, device)


@torch.no_grad()
def maps_of_images(ens: RunEnsembles, images01: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Maps and image scores of a whole split.

    images01 (N, H, W) in [0, 1] -> {"A_*": (N, H, W) float32, "score/A_*": (N,) float32}.
    """
    out: dict[str, list[np.ndarray]] = {}
    x_all = torch.as_tensor(np.asarray(images01, np.float32))
    for i in range(0, len(x_all), batch_size):
        x = to_network_space(x_all[i:i + batch_size].to(ens.device))
        for name, m in ens.maps(x).items():
            out.setdefault(name, []).append(m.float().cpu().numpy())
            out.setdefault(f"score/{name}", []).append(image_score(m).float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}
