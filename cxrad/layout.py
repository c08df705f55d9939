"""Every path of a prepared folder and of a run, in one place.

Prepared data (``cxrad prepare``)::

    PREPARED/manifest.json                kind "prepared"
    PREPARED/data.h5                      the image sets (layout: cxrad/io/store.py)

A run::

    RUN/manifest.json                     kind "run": method, config, prepared input record, a copy of
                                          the preprocessing (so `predict` needs only RUN)
    RUN/maps/<split>.h5, manifest.json    kind "maps": every map and image score of a split (`cxrad score`)
    RUN/eval/                             kind "eval": metrics, scores.csv, plots (`cxrad evaluate`)

    DDAD-ASR's own folders:
    RUN/ensemble/manifest.json            kind "ensemble": written once every member is trained
    RUN/ensemble/log.jsonl                one JSON line per (module, member, epoch)
    RUN/ensemble/<module>/member-<i>.pt   final weights (plain state dict); .json: seed, epochs, losses;
                                          .ckpt: checkpoint while training (removed when finished)
    RUN/synth/fpi.h5, preview.png         kind "synth": FPI recipes per ASR epoch
    RUN/refine/<inputs>/asr.pt            kind "refine": ASR-Net + what applying it needs;
                                          checkpoint.ckpt (resume state), log.json (per-epoch loss)

    Single-model methods' folder (SimSID, PatchCore, WSCXR; `cxrad fit`):
    RUN/model/model.pt, log.json          kind "model": the kept state; checkpoint.ckpt while training

Every artifact folder also holds ``.cxrad-partial`` while a stage writes it.
See docs/artifacts.md for the manifest schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
PARTIAL_MARKER = ".cxrad-partial"
DATA_FILE = "data.h5"
DDAD_MODULES = ("ndm", "udm")
SYNTH_RECIPES, SYNTH_PREVIEW = "fpi.h5", "preview.png"   # inside RUN/synth (or a custom synth folder)


@dataclass(frozen=True)
class PreparedLayout:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def data(self) -> Path:
        return self.root / DATA_FILE


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- generic ------------------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def maps(self) -> Path:
        return self.root / "maps"

    def maps_file(self, split: str) -> Path:
        return self.maps / f"{split}.h5"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def metrics(self) -> Path:
        return self.eval / "metrics.json"

    # -- DDAD-ASR: ensembles --------------------------------------------------------------------
    @property
    def ensemble(self) -> Path:
        return self.root / "ensemble"

    @property
    def ensemble_log(self) -> Path:
        return self.ensemble / "log.jsonl"

    def module(self, module: str) -> Path:
        return self.ensemble / module

    def member_weights(self, module: str, i: int) -> Path:
        return self.module(module) / f"member-{i}.pt"

    def member_info(self, module: str, i: int) -> Path:
        return self.module(module) / f"member-{i}.json"

    def member_checkpoint(self, module: str, i: int) -> Path:
        return self.module(module) / f"member-{i}.ckpt"

    # -- DDAD-ASR: synthesis and refinement --------------------------------------------------------
    @property
    def synth(self) -> Path:
        return self.root / "synth"

    @property
    def synth_recipes(self) -> Path:
        return self.synth / SYNTH_RECIPES

    @property
    def synth_preview(self) -> Path:
        return self.synth / SYNTH_PREVIEW

    def refine(self, inputs: str) -> Path:
        return self.root / "refine" / inputs

    # -- single-model methods (SimSID, PatchCore, WSCXR: cxrad/methods/fitting.py) ---------------
    @property
    def model(self) -> Path:
        return self.root / "model"


# file names inside a refine folder
ASR_MODEL, ASR_CHECKPOINT, ASR_LOG = "asr.pt", "checkpoint.ckpt", "log.json"
# file names inside RUN/model (`cxrad fit`)
MODEL_WEIGHTS, MODEL_CHECKPOINT, MODEL_LOG = "model.pt", "checkpoint.ckpt", "log.json"
