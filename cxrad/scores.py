"""The vocabulary of anomaly scores, shared by every method and every generic stage.

A method produces named **maps** — (N, H, W) float arrays, larger = more anomalous — and the
image-level **score** of each map is its mean over the pixels (:func:`image_score`). A method
declares its score names once, as :class:`ScoreSpec` tuples: the order of the tuple is the
**report order** (tables, CSV columns), ``priority`` says which available score **decides** in
`predict` (lowest number first), ``refined`` marks scores computed from other maps by a learnt
refinement (DDAD-ASR's R_*), and ``probability`` marks maps that lie in [0, 1] (they are shown
on a fixed colour scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ScoreSpec:
    name: str
    description: str
    priority: int                 # 0 decides first
    refined: bool = False
    probability: bool = False


def image_score(score_map):
    """Image-level score: the mean of a map over its pixels.

    (N, H, W) -> (N,); works on numpy arrays and torch tensors alike (float32 accumulation for
    numpy float16 input, so stored maps give the same score as the live ones up to rounding).
    """
    if isinstance(score_map, np.ndarray):
        if score_map.size == 0:
            return np.zeros(len(score_map), np.float32)
        return score_map.reshape(len(score_map), -1).mean(axis=1, dtype=np.float64).astype(np.float32)
    return score_map.flatten(1).mean(dim=1)


def in_report_order(specs: Sequence[ScoreSpec], names) -> list[str]:
    """The names among ``names`` that ``specs`` declares, in report order."""
    have = set(names)
    return [s.name for s in specs if s.name in have]


def decision_score(specs: Sequence[ScoreSpec], names) -> str:
    """The score that decides abnormal/normal: the available one with the lowest priority number."""
    have = set(names)
    ranked = sorted((s for s in specs if s.name in have), key=lambda s: s.priority)
    if not ranked:
        raise ValueError(f"none of the scores {sorted(have)} is declared by the method")
    return ranked[0].name


def spec_of(specs: Sequence[ScoreSpec], name: str) -> ScoreSpec:
    return next(s for s in specs if s.name == name)


@dataclass
class ScoredImages:
    """What a method's scorer returns for N images: maps (N, H, W) float32 and scores (N,) float32,
    both keyed by score name."""

    maps: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.scores.values()))) if self.scores else 0

    def subset(self, rows) -> "ScoredImages":
        return ScoredImages({k: v[rows] for k, v in self.maps.items()},
                            {k: np.asarray(v)[rows] for k, v in self.scores.items()})

    @staticmethod
    def empty(names: Sequence[str], images01) -> "ScoredImages":
        """Zero images' maps (0, H, W) and scores (0,) for every name: what a scorer returns for an
        empty batch (``images01`` (0, H, W), or any empty array: then H = W = 0)."""
        h, w = np.shape(images01)[1:] if np.ndim(images01) == 3 else (0, 0)
        return ScoredImages({k: np.zeros((0, h, w), np.float32) for k in names},
                            {k: np.zeros(0, np.float32) for k in names})

    @staticmethod
    def concatenate(parts: Sequence["ScoredImages"]) -> "ScoredImages":
        if not parts:
            return ScoredImages()
        return ScoredImages({k: np.concatenate([p.maps[k] for p in parts]) for k in parts[0].maps},
                            {k: np.concatenate([p.scores[k] for p in parts]) for k in parts[0].scores})
