"""What an evaluation scores, in report order: the noisy input, the classical methods, the models.

Rules:
- A method has a key (its column prefix: ``noisy``, the classical method's name, ``model0``,
  ``model0x8``) and a display name (the report's): a model is named by its directory, or its run's
  directory for the generic names jobs.train writes (``runs/unet-g05/best_model`` -> ``unet-g05``),
  made unique; a self-ensemble size N adds a method ``NAME xN``.
- A classical method that cannot run here (an optional package missing) is reported as skipped,
  with the reason, never scored as zero.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from .. import baselines
from .stages import METRICS, NOISY

# Directory names the jobs give every model dir (jobs.train writes OUT/best_model): the run's
# directory (the parent) names the model instead.
_GENERIC_DIR_NAMES = {"model", "best_model", "final_model", "checkpoint", "last_model"}


def _model_entries(dirs: Sequence[str], taken: set[str], ensembles: Sequence[int] = (1,)) -> list[dict]:
    """[{key, name, dir, config, weights, ensemble}] with unique display names (directory name, else
    config model), one per model and self-ensemble size ("NAME x8")."""
    from ..checkpoint import PRETRAINED, load_config, weights_digest

    entries = []
    names = set(taken)
    for i, d in enumerate(dirs):
        cfg = load_config(d)
        path = str(d).rstrip("/")
        base = os.path.basename(path).removeprefix(PRETRAINED)  # pretrained:color-blind -> "color-blind"
        if base in _GENERIC_DIR_NAMES:  # runs/unet-g05/best_model -> "unet-g05"
            base = os.path.basename(os.path.dirname(path)) or base
        base = base or cfg.get("model", f"model{i}")
        name = base
        if name in names:
            name = f"{base}-{cfg.get('model', i)}"
        k = 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.add(name)
        digest = weights_digest(d)
        for n in ensembles:
            entries.append({"key": f"model{i}" if n == 1 else f"model{i}x{n}",
                            "name": name if n == 1 else f"{name} x{n}", "dir": str(d), "config": cfg,
                            "weights": digest, "ensemble": n})
    return entries


@dataclass(frozen=True)
class Methods:
    """What is scored, in report order: the noisy input, the classical methods, the models."""

    classical: list[str]  # asked for
    skipped: dict[str, str]  # classical methods that cannot run here -> why
    models: list[dict]  # _model_entries

    @classmethod
    def resolve(cls, names: Sequence[str], model_dirs: Sequence[str], ensembles: Sequence[int] = (1,)) -> Methods:
        # A missing optional method is reported as skipped with the reason, never scored as zero.
        skipped = {}
        for n in names:
            ok, why = baselines.availability(n)
            if not ok:
                skipped[n] = why
        return cls(list(names), skipped, _model_entries(model_dirs, {NOISY, *baselines.BASELINES}, ensembles))

    @property
    def running(self) -> list[str]:
        """The classical methods that run."""
        return [n for n in self.classical if n not in self.skipped]

    @property
    def keys(self) -> list[str]:
        """Every method in report order, skipped ones included."""
        return [NOISY, *self.classical, *[m["key"] for m in self.models]]

    @property
    def columns(self) -> list[str]:
        """What the pipeline hands the driver: id, noise, and the metrics of every method that ran."""
        ran = [NOISY, *self.running, *[m["key"] for m in self.models]]
        return ["id", "noise", *[f"{k}__{m}" for k in ran for m in METRICS]]

    def model(self, key: str) -> dict | None:
        return next((m for m in self.models if m["key"] == key), None)

    def display(self, key: str) -> str:
        m = self.model(key)
        return m["name"] if m else key

    def kind(self, key: str) -> str:
        return "input" if key == NOISY else "model" if self.model(key) else "classical"
