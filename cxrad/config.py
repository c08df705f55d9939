"""One dataclass per stage: the single source of every default.

The CLI builds its option defaults from these, `cxrad run` TOML files override them field by
field, and the resolved dataclass is what each stage records in its manifest. Reference
hyper-parameters (DESIGN §1.2) are the defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class PrepareConfig:
    """`cxrad prepare`: image decoding, preprocessing and split building."""

    size: int = 64                      # output side in pixels (square)
    intensity: str = "minmax"           # "minmax" or "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)  # used when intensity == "percentile"
    crop: str = "none"                  # "none" or "center" (centre crop to a square before resizing)
    voi_lut: bool = True                # apply a DICOM VOI LUT / window when present
    allow_modality: tuple[str, ...] = ()  # extra DICOM modalities accepted besides CR/DX/DR/RG/XA
    store_dtype: str = "float16"        # "float16" ([0,1]) or "uint8" (scale 1/255 recorded)
    workers: Optional[int] = None       # decoding processes; None = CPUs this process may use
    # split building (used when the input does not name Dn/Du directly)
    normal_count: Optional[int] = None
    unlabeled_count: Optional[int] = None
    anomaly_rate: Optional[float] = None
    test_fraction: float = 0.2          # hold-out when the input has no test split
    val_normals: int = 0                # normal images held out of training as the `val` split: the
                                        # decision threshold comes from their scores (training normals
                                        # score lower than unseen ones; measured in the README)
    seed: int = 0


@dataclass
class EnsembleConfig:
    """`cxrad train-ensemble`: K reconstruction networks per module (DESIGN §1.1, §1.2)."""

    module: str = "both"                # "ndm", "udm" or "both"
    members: int = 3                    # K; intra-discrepancy needs K >= 2
    backbone: str = "ae"                # "ae", "memae" or "aeu"
    epochs: int = 250
    batch_size: int = 64
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    latent_dim: int = 16
    memory_items: int = 25              # MemAE
    shrink_threshold: float = 0.0       # MemAE hard shrinkage; 0 disables (reference)
    entropy_weight: float = 0.0002      # MemAE attention-entropy loss weight
    seed: int = 0
    paired_init: bool = True            # UDM member i starts from NDM member i's weights and shuffle seed:
                                        # A_inter = |mean_NDM - mean_UDM| then measures what Du taught the
                                        # UDM, not two independent inits (measured: +1.6 to +2.7 AUC on
                                        # ZhangLab, benchmarks/results/zhanglab-asr-study.md); False = the
                                        # reference's independent members
    ema_decay: float = 0.998            # keep an exponential moving average of each member's weights and
                                        # save it (BN statistics recomputed over the training set); warm-up
                                        # min(decay, (1+t)/(10+t)) over steps t, so short runs average
                                        # their last ~10 % of steps. 0 = the reference: last step's weights
    checkpoint_every: int = 10          # epochs between checkpoints
    device: str = "auto"
    amp: bool = False                   # bf16 autocast of the forward pass; CUDA only (changes results)


@dataclass
class ScoreConfig:
    """`cxrad score`: discrepancy maps of a split."""

    split: str = "test"                 # test | val | normal | unlabeled | all
    batch_size: int = 256
    device: str = "auto"


@dataclass
class SynthConfig:
    """`cxrad synthesize`: FPI pseudo-anomaly recipes (DESIGN §1.3)."""

    epochs: int = 100                   # one recipe set per ASR training epoch
    seed: int = 0
    patch_probability: float = 0.5
    centre_range: tuple[float, float] = (0.1, 0.9)      # fraction of the side, [lo, hi)
    half_width_range: tuple[float, float] = (0.05, 0.2)  # fraction of the side, [lo, hi)
    preview_count: int = 32
    # Where the patch is blended (benchmarks/results/zhanglab-asr-study.md):
    #   "maps"  — into the discrepancy maps of a Dn image, donor maps from an unlabelled (Du) image;
    #   "image" — the reference: into the image, donor another Dn image (ASR-Net then sees the maps
    #             of the blended image, which at 64 px barely change inside the patch);
    #   "auto"  — "maps" when the prepared data hold unlabelled images, else "image".
    space: str = "auto"


@dataclass
class RefineConfig:
    """`cxrad refine`: ASR-Net training on maps of synthetic anomalies (DESIGN §1.1, §1.2)."""

    inputs: str = "dual"                # "dual" ([A_inter, A_intra]) or "intra"
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-4
    focal_gamma: float = 2.0
    hidden_channels: int = 128
    seed: int = 0
    checkpoint_every: int = 10
    device: str = "auto"
    # Departures from the reference that make the final model stable (benchmarks/results/zhanglab-asr-study.md):
    normalize: str = "normal-pixel-mean"  # divide each map channel by the normal training images' mean
                                        # map, pixel by pixel (floored at 10% of the channel mean);
                                        # "normal-mean": by one scalar per channel; "none" = reference:
                                        # raw maps, ~1e-2 scale
    ema_decay: float = 0.999            # keep an exponential moving average of the weights (0 = off);
                                        # warm-up min(decay, (1+t)/(10+t)) so short runs are not stuck at init
    clip_quantile: float = 0.0          # >0: clip each input channel at this quantile of its values on
                                        # the normal training images' maps (recorded); 0 = off
    level_jitter: tuple[float, float] = (1.0, 1.0)  # per-sample, per-channel gain on the input maps,
                                        # log-uniform in [lo, hi]: the ensembles memorise Dn, so maps of
                                        # unseen images sit 1.2-1.9x higher than Dn maps; (1, 1) = off
    precise_bn: bool = True             # recompute BatchNorm statistics of the kept weights over one
                                        # full synthetic epoch (the running stats of batch-8 training are
                                        # those of the last ~10 batches)


@dataclass
class EvaluateConfig:
    """`cxrad evaluate`: metrics and report on the labelled test split (DESIGN §3)."""

    split: str = "test"
    threshold_percentile: float = 95.0  # of the calibration normals' scores
    threshold_from: str = "auto"        # "auto": held-out normals (val split, >= 20) when present, else the
                                        # normal training images; "val" or "normal" to force one
                                        # (cxrad/thresholds.py says why held-out normals are better)
    overlay_count: int = 8              # highest and lowest scored images shown
    device: str = "auto"


@dataclass
class PredictConfig:
    """`cxrad predict`: scores and overlays for new images with a finished run."""

    num_shards: int = 1
    shard_id: int = 0
    overlays: bool = True
    device: str = "auto"


def replace_known(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return ``cfg`` with ``overrides`` applied; unknown keys are a user error (typo guard)."""
    from cxrad.errors import CxradError

    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise CxradError(
            f"unknown {type(cfg).__name__} option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}."
        )
    fixed = {}
    for k, v in overrides.items():
        default = getattr(cfg, k)
        fixed[k] = tuple(v) if isinstance(default, tuple) and isinstance(v, list) else v
    return dataclasses.replace(cfg, **fixed)

