"""Where the benchmarks find their data: ``$CXRAD_DATA`` (or ``--data``), never a path in the repo.

``CXRAD_DATA`` is a folder laid out like the public releases (docs/benchmarks.md says where each is
published): ``kermany-pneumonia-224/kermany_pneumonia_224.tar`` (Kermany et al. 2018, CC BY 4.0,
resized to 224 px), ``kermany-pneumonia-fullres-sample/``, ``dicom/``. The split CSVs ship with
the repository in ``benchmarks/splits/``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPLITS = REPO / "benchmarks" / "splits"
RESULTS = REPO / "benchmarks" / "results"
KERMANY_224 = Path("kermany-pneumonia-224") / "kermany_pneumonia_224.tar"


def data_root(explicit: Path | None = None) -> Path:
    """``explicit`` (a --data flag) or $CXRAD_DATA; exits with a one-line message when neither is set."""
    root = explicit or (Path(os.environ["CXRAD_DATA"]) if os.environ.get("CXRAD_DATA") else None)
    if root is None:
        sys.exit("benchmark data not found: set CXRAD_DATA to the folder holding kermany-pneumonia-224/ "
                 "(docs/benchmarks.md says where to get it) or pass --data.")
    if not root.is_dir():
        sys.exit(f"{root}: CXRAD_DATA is not a folder; point it at the folder holding kermany-pneumonia-224/.")
    return root


def data_file(relative: Path, explicit_root: Path | None = None) -> Path:
    """A file under the data root, refused with a one-line message when missing."""
    path = data_root(explicit_root) / relative
    if not path.exists():
        sys.exit(f"{path}: missing; CXRAD_DATA must hold {relative} (docs/benchmarks.md).")
    return path


def add_intensity_option(ap) -> None:
    """``--intensity`` for a benchmark that prepares its own data: the default is `cxrad prepare`'s."""
    from cxrad.config import PrepareConfig

    ap.add_argument("--intensity", choices=("minmax", "percentile"), default=PrepareConfig.intensity,
                    help="per-image intensity scaling at prepare (cxrad prepare --intensity; default: "
                         f"{PrepareConfig.intensity}). Records without an 'intensity' field used minmax.")


def intensity_tag(intensity: str) -> str:
    """Suffix of prepared-folder and run names: '' for minmax (the names every record before the
    percentile default used), '-pct' for percentile, so the two preparations never share a folder."""
    return "-pct" if intensity == "percentile" else ""
