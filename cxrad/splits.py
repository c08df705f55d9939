"""Dn / Du / Dt selection from a pool of labelled and unlabelled images (docs/method.md, "Splits") — pure.

Inputs are per-image arrays (labels 0 normal, 1 abnormal, -1 unknown; optional patient ids); the
output is index arrays into them. Nothing here reads files.

Rules (in this order):

1. Test hold-out (only when the input names no test set): whole patients, seeded, until at least
   ``test_fraction`` of the *labelled* pool images are held out; unknown-label images never go to
   test (they could not be scored).
2. Calibration hold-out (``val_normals`` > 0): that many label-0 images (whole patients, seeded) go
   to the ``val`` set. No model trains on them; `cxrad evaluate` and `cxrad predict` take their
   decision threshold from their scores, since training normals score lower than unseen ones.
   When ``val_normals`` is not given, the prepare stage carves :func:`auto_val_count` images out
   of the chosen Dn instead (:func:`carve_val`), whether Dn was drawn here or named by the input.
3. Dn: ``normal_count`` images of label 0.
4. Du: with ``anomaly_rate`` r, ``round(r·u)`` images of label 1 and the rest of label 0 (images of
   unknown label are not used, their rate is unknown). Without r, ``u`` images drawn uniformly
   from what is left of the pool, whatever their label.
5. Defaults: ``normal_count`` missing = every label-0 image Du does not need; ``unlabeled_count``
   missing = the largest count the pool allows (with r) or all that is left (without r). With no
   count and no rate at all, Dn = all label-0 images and Du = all unknown-label images; a pool whose
   images are all labelled then needs explicit counts (else Du would be 100 % abnormal).

Requests the pool cannot satisfy raise :class:`CxradError` with the largest feasible counts; counts
are never silently shrunk. When patient ids exist every patient's images stay in one set; patients
are indivisible, so exact counts are reached greedily over a seeded patient order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from cxrad.errors import CxradError


@dataclass(frozen=True)
class SplitRequest:
    normal_count: Optional[int] = None
    unlabeled_count: Optional[int] = None
    anomaly_rate: Optional[float] = None
    seed: int = 0
    test_fraction: float = 0.2
    val_normals: int = 0


def n_abnormal(unlabeled_count: int, anomaly_rate: float) -> int:
    """Abnormal images in a Du of ``unlabeled_count`` at ``anomaly_rate`` (round half up)."""
    return int(np.floor(anomaly_rate * unlabeled_count + 0.5))


def _validate(req: SplitRequest) -> None:
    for name in ("normal_count", "unlabeled_count", "val_normals"):
        v = getattr(req, name)
        if v is not None and v < 0:
            raise CxradError(f"--{name.replace('_', '-')} {v}: must be >= 0.")
    if req.anomaly_rate is not None and not 0.0 <= req.anomaly_rate <= 1.0:
        raise CxradError(f"--anomaly-rate {req.anomaly_rate}: must lie in [0, 1].")
    if not 0.0 < req.test_fraction < 1.0:
        raise CxradError(f"--test-fraction {req.test_fraction}: must lie in (0, 1).")


def _groups(n: int, patient_ids: Optional[Sequence[str]]) -> list[np.ndarray]:
    """Index groups, one per patient (or one per image when no ids), in a canonical order."""
    if patient_ids is None or not any(patient_ids):
        return [np.array([i]) for i in range(n)]
    by: dict[str, list[int]] = {}
    for i, pid in enumerate(patient_ids):
        # images without a patient id are their own patient
        by.setdefault(pid if pid else f"\0{i}", []).append(i)
    return [np.array(v) for _, v in sorted(by.items())]


def _shuffled(groups: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    return [groups[i] for i in rng.permutation(len(groups))]


def _take(groups: list[np.ndarray], labels: np.ndarray, need: dict[int, int], allowed: set[int],
          any_label: Optional[int] = None) -> tuple[list[np.ndarray], list[np.ndarray], dict[int, int]]:
    """Greedily take groups whose labels are all in ``allowed`` and fit in ``need``.

    ``need`` maps label -> count still wanted; with ``any_label`` set, ``need`` holds one entry
    ``{any_label: count}`` that images of every allowed label fill. Returns (taken, left, remaining).
    """
    need = dict(need)
    taken, left = [], []
    for g in groups:
        lab = labels[g]
        if not set(lab.tolist()) <= allowed:
            left.append(g)
            continue
        if any_label is not None:
            fits = len(g) <= need[any_label]
            if fits:
                need[any_label] -= len(g)
        else:
            counts = {k: int((lab == k).sum()) for k in allowed}
            fits = all(c <= need.get(k, 0) for k, c in counts.items())
            if fits:
                for k, c in counts.items():
                    need[k] = need.get(k, 0) - c
        (taken if fits else left).append(g)
    return taken, left, need


def _cat(groups: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(groups)) if groups else np.zeros(0, dtype=np.int64)


def largest_feasible(p0: int, p1: int, req: SplitRequest) -> str:
    """Human-readable largest feasible counts for a rate request on a pool of p0 normal, p1 abnormal."""
    r = req.anomaly_rate
    n = req.normal_count or 0
    u = req.unlabeled_count
    parts = []
    if r is not None:
        u_max = _max_unlabeled(p0 - n, p1, r)
        parts.append(f"--unlabeled-count {u_max} with --normal-count {n}")
        if u is not None:
            u1 = n_abnormal(u, r)
            if u1 <= p1 and u - u1 <= p0:
                parts.append(f"--normal-count {p0 - (u - u1)} with --unlabeled-count {u}")
    else:
        parts.append(f"--normal-count {p0}")
    return " or ".join(parts)


def _max_unlabeled(p0: int, p1: int, r: float) -> int:
    """Largest u with round(r·u) <= p1 abnormal and u - round(r·u) <= p0 normal images."""
    if p0 < 0:
        return 0
    u = p0 + p1
    while u > 0 and (n_abnormal(u, r) > p1 or u - n_abnormal(u, r) > p0):
        u -= 1
    return u


def _hold_out_test(groups: list[np.ndarray], labels: np.ndarray, fraction: float
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The first shuffled groups, all labelled, until ``fraction`` of the labelled images: (test, rest)."""
    want = int(np.ceil(fraction * int((labels >= 0).sum())))
    test, rest = [], []
    got = 0
    for g in groups:
        if got < want and (labels[g] >= 0).all():
            test.append(g)
            got += len(g)
        else:
            rest.append(g)
    return _cat(test), rest


def _hold_out_val(groups: list[np.ndarray], labels: np.ndarray, count: int, grouped: bool, pool_name: str
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """``count`` normal images (whole all-normal patients) held out as the val split: (val, rest)."""
    val, groups, rem = _take(groups, labels, {0: count}, {0})
    if rem[0]:
        n0 = int(sum(int((labels[g] == 0).sum()) for g in val + groups))
        raise CxradError(
            f"{pool_name}: --val-normals {count} asks for more normal images than "
            + (f"the {n0} left after the test hold-out" if not grouped else
               f"whole all-normal patients can give exactly (largest found: {count - rem[0]})")
            + "; lower --val-normals.")
    return _cat(val), groups


def _split_with_rate(groups, labels, n, u, r, p0, p1, desc):
    """Dn/Du with an anomaly rate for Du: (dn, du, missing, n, u)."""
    if u is None:
        if n is None:
            raise CxradError(f"{desc}: with --anomaly-rate give --normal-count or --unlabeled-count too.")
        u = _max_unlabeled(p0 - n, p1, r)
    u1 = n_abnormal(u, r)
    u0 = u - u1
    if n is None:
        n = p0 - u0
    if n < 0 or u1 > p1 or n + u0 > p0:
        raise CxradError(
            f"{desc}; --normal-count {n} --unlabeled-count {u} --anomaly-rate {r} needs {n + u0} normal "
            f"and {u1} abnormal; largest feasible: {largest_feasible(p0, p1, SplitRequest(n, u, r))}."
        )
    # Du first for its abnormal images, then Dn, then Du's normals: the order does not matter for
    # ungrouped pools; for grouped pools all-normal patients are shared fairly between Dn and Du.
    dn, groups, rem_n = _take(groups, labels, {0: n}, {0})
    du, groups, rem_u = _take(groups, labels, {0: u0, 1: u1}, {0, 1})
    return dn, du, {"normal": rem_n[0], "unlabeled": rem_u.get(0, 0) + rem_u.get(1, 0)}, n, u


def _split_counts(groups, labels, n, u, p0, desc):
    """Dn/Du from counts alone (Du a uniform draw): (dn, du, missing, n, u)."""
    if n is None:
        if u is None:
            raise CxradError(f"{desc}: give --normal-count or --unlabeled-count (or --anomaly-rate).")
        # Du is a uniform draw; Dn takes every normal left afterwards.
        du, groups, rem_u = _take(groups, labels, {-9: u}, {0, 1, -1}, any_label=-9)
        dn, groups, rem_n = _take(groups, labels, {0: p0}, {0})
        return dn, du, {"normal": 0, "unlabeled": rem_u[-9]}, n, u
    if n > p0:
        raise CxradError(f"{desc}; --normal-count {n} is more than the {p0} normal images; "
                         f"largest feasible: --normal-count {p0}.")
    dn, groups, rem_n = _take(groups, labels, {0: n}, {0})
    rest = int(sum(len(g) for g in groups))
    if u is None:
        u = rest
    if u > rest:
        raise CxradError(f"{desc}; after Dn ({n}) only {rest} images are left for "
                         f"--unlabeled-count {u}; largest feasible: --unlabeled-count {rest}.")
    du, groups, rem_u = _take(groups, labels, {-9: u}, {0, 1, -1}, any_label=-9)
    return dn, du, {"normal": rem_n[0], "unlabeled": rem_u[-9]}, n, u


AUTO_VAL_FRACTION = 0.1       # of Dn, held out for calibration when --val-normals is not given
AUTO_VAL_MIN_NORMALS = 200    # below this, 10 % is under 20 images: too few for a 95th percentile
AUTO_VAL_MAX = 200            # enough for the percentile (about ±1.5 points of specificity)


def auto_val_count(n_normals: int) -> int:
    """Normal images held out of a Dn of ``n_normals`` by default (``--val-normals`` not given):
    10 % (at most 200); none when Dn has fewer than 200 images."""
    if n_normals < AUTO_VAL_MIN_NORMALS:
        return 0
    return min(AUTO_VAL_MAX, int(np.floor(AUTO_VAL_FRACTION * n_normals + 0.5)))


def carve_val(n: int, count: int, patient_ids: Optional[Sequence[str]] = None, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Split a chosen Dn of ``n`` images into (val, kept) index arrays into Dn, ``count`` images in val.

    Whole patients only (seeded order, greedy), so val may hold fewer than ``count`` when the
    patients left cannot fill it exactly; the caller decides whether that is acceptable.
    """
    rng = np.random.default_rng([seed, 2])   # its own stream: the Dn/Du draw does not shift with it
    groups = _shuffled(_groups(n, patient_ids), rng)
    val, kept, _ = _take(groups, np.zeros(n, dtype=np.int64), {0: count}, {0})
    return _cat(val), _cat(kept)


def select(labels: np.ndarray, req: SplitRequest, patient_ids: Optional[Sequence[str]] = None,
           *, need_test: bool = False, pool_name: str = "the training pool") -> dict[str, np.ndarray]:
    """Split a pool into ``normal`` / ``unlabeled`` (and ``test`` when ``need_test``, ``val`` when
    ``req.val_normals``).

    ``labels``: (N,) int, 0 / 1 / -1. ``patient_ids``: N strings ('' = none) or None.
    Returns set name -> sorted indices into the pool; images in no set are simply unused.
    """
    _validate(req)
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(req.seed)
    groups = _shuffled(_groups(len(labels), patient_ids), rng)
    grouped = len(groups) < len(labels)
    out: dict[str, np.ndarray] = {}
    if need_test:
        out["test"], groups = _hold_out_test(groups, labels, req.test_fraction)
    if req.val_normals:
        out["val"], groups = _hold_out_val(groups, labels, req.val_normals, grouped, pool_name)

    pool = _cat(groups)
    p0 = int((labels[pool] == 0).sum())
    p1 = int((labels[pool] == 1).sum())
    pu = int((labels[pool] == -1).sum())
    n, u, r = req.normal_count, req.unlabeled_count, req.anomaly_rate
    desc = f"{pool_name} has {p0} normal, {p1} abnormal, {pu} unlabelled images"

    if n is None and u is None and r is None:
        if p1:
            raise CxradError(
                f"{desc}: say how to split it, e.g. --normal-count {p0 // 2} --unlabeled-count "
                f"{_max_unlabeled(p0 - p0 // 2, p1, 0.6)} --anomaly-rate 0.6 (or name the sets in a split column)."
            )
        taken, groups, _ = _take(groups, labels, {0: p0}, {0})
        out["normal"] = _cat(taken)
        out["unlabeled"] = _cat([g for g in groups if (labels[g] == -1).all()])
        return out

    if r is not None:
        dn, du, missing, n, u = _split_with_rate(groups, labels, n, u, r, p0, p1, desc)
    else:
        dn, du, missing, n, u = _split_counts(groups, labels, n, u, p0, desc)
    if any(missing.values()):
        # only reachable with patient groups: indivisible patients left a gap
        got_n = n - missing["normal"]
        got_u = (u or 0) - missing["unlabeled"]
        raise CxradError(
            f"{desc} in {len(set(patient_ids or []))} patients; patients cannot be split across sets, so the "
            f"request (--normal-count {n} --unlabeled-count {u}) could only be met up to {got_n} normal and "
            f"{got_u} unlabelled; use those counts (largest feasible found) or another --seed."
        ) if grouped else AssertionError("ungrouped selection cannot fall short")
    out["normal"] = _cat(dn)
    out["unlabeled"] = _cat(du)
    return out
