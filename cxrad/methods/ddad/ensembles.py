"""A run's trained NDM/UDM ensembles: is the ensemble finished, load it frozen, compute its maps.

Used by `refine` (maps of synthetic images, on the fly), by the scorer (maps of any image) and by
the analysis benchmarks. Images go in as (N, H, W) in [0, 1] (the prepared store) and are mapped
to the network's [-1, 1] space here, the one place that knows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from cxrad.artifacts import load_torch
from cxrad.errors import CxradError
from cxrad.methods.ddad.discrepancy import discrepancy_maps
from cxrad.runs import RunInfo
from cxrad.scores import image_score


def to_network_space(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the space the reconstruction networks work in."""
    return images01 * 2.0 - 1.0


def read_ensemble(run: RunInfo, *, command: str = "cxrad score") -> dict[str, Any]:
    """The ensemble manifest of a run whose members are all trained; its ``config`` equals the
    run's, and ``members`` lists each member's seed, epochs, final loss and wall time.

    Raises one line naming the step when the ensemble is missing, unfinished or from another run.
    """
    folder = run.layout.ensemble
    if not (folder / "manifest.json").is_file():
        raise CxradError(
            f"{run.root}: the ensemble is not finished (no {folder}/manifest.json); train it with "
            f"`cxrad train-ensemble PREPARED --run {run.root}` (or add --resume) before `{command}`."
        )
    ens = run.artifact(folder, "ensemble")
    if ens["config"] != run.config:
        raise CxradError(
            f"{folder}: trained with another configuration than {run.layout.manifest}; "
            f"re-train with `cxrad train-ensemble PREPARED --run {run.root} --force`."
        )
    return ens


def has_udm(run: RunInfo) -> bool:
    """Whether the run trains a UDM (its recorded modules)."""
    return "udm" in run.config.get("modules", ())


@dataclass
class RunEnsembles:
    """A run's frozen NDM and (optional) UDM on one device."""

    run: RunInfo
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


def load_module(run: RunInfo, module: str, device: torch.device | str = "cpu"):
    """The frozen BatchedEnsemble of ``module`` ("ndm" or "udm") of a finished run, in eval mode.

    Calling it on x (B, 1, H, W) in [-1, 1] gives reconstructions (K, B, 1, H, W), or for AE-U a
    (mean, logvar) pair of such tensors. Weights are read with ``torch.load(weights_only=True)``, after
    their sha256 is checked against the ensemble manifest (a damaged file is one line naming it).
    """
    from cxrad.methods.ddad.autoencoders import DEPTH
    from cxrad.methods.ddad.ensemble import BatchedEnsemble

    outputs = read_ensemble(run).get("outputs", {})  # one line naming the step when unfinished (read once per run)
    cfg = run.config
    if module not in cfg["modules"]:
        raise CxradError(
            f"{run.root}: the run has no {module} ensemble (it trained {', '.join(cfg['modules'])}); "
            f"train it with `cxrad train-ensemble PREPARED --run {run.root} --module both`."
        )
    states = [load_torch(run.layout.member_weights(module, i),
                         sha256=outputs.get(f"{module}/member-{i}.pt", {}).get("sha256"),
                         fix=f"retrain it with `cxrad train-ensemble {run.prepared} --run {run.root} --member {i} "
                             "--force`.")
              for i in range(cfg["members"])]
    ens = BatchedEnsemble(cfg["backbone"], cfg["members"], cfg["image_size"], cfg["latent_dim"],
                          cfg["memory_items"], cfg["shrink_threshold"], cfg.get("depth", DEPTH))
    ens.load_member_states(states)
    ens.to(device).eval()
    for p in ens.parameters():
        p.requires_grad_(False)
    return ens


def open_ensembles(run: RunInfo, device: torch.device, *, need_udm: bool = False,
                   command: str = "cxrad score") -> RunEnsembles:
    """Check the run's ensembles and load them frozen on ``device``.

    ``need_udm`` on a run without a UDM is an error naming the fix (train it, or intra inputs).
    """
    read_ensemble(run, command=command)
    if need_udm and not has_udm(run):
        raise CxradError(
            f"{run.root}: has no UDM ensemble, which dual inputs need; run `cxrad train-ensemble --module udm` "
            "first or use `--inputs intra`."
        )
    ndm = load_module(run, "ndm", device)
    udm = load_module(run, "udm", device) if has_udm(run) else None
    return RunEnsembles(run, ndm, udm, device)


@torch.no_grad()
def maps_of_images(ens: RunEnsembles, images01: np.ndarray, batch_size: int = 256
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The discrepancy maps of a whole image set, for analysis.

    images01 (N, H, W) in [0, 1] -> ({"A_*": (N, H, W) float32}, {"A_*": (N,) float32 image scores}).
    """
    maps: dict[str, list[np.ndarray]] = {}
    scores: dict[str, list[np.ndarray]] = {}
    x_all = torch.as_tensor(np.asarray(images01, np.float32))
    for i in range(0, len(x_all), batch_size):
        x = to_network_space(x_all[i:i + batch_size].to(ens.device))
        for name, m in ens.maps(x).items():
            maps.setdefault(name, []).append(m.float().cpu().numpy())
            scores.setdefault(name, []).append(image_score(m).float().cpu().numpy())
    return ({k: np.concatenate(v) for k, v in maps.items()}, {k: np.concatenate(v) for k, v in scores.items()})
