"""How a model runs on images: one frozen spec holding every forward setting.

    spec = cfg.inference_spec()                     # a stage's flags (DenoiseConfig, EvaluateConfig)
    spec = spec.placed("cuda", torch_threads=1)     # the actor pool's plan says where it runs
    Denoiser(model_dir, spec)                       # the actor (dae.inference) hands it on to
    denoise_images(model, images, spec)             # the one way to run a model (dae.forward)

Owns the forward settings (tile, tile_overlap, forward_batch, forward_pixels, deterministic,
precision, ensemble, device, torch_threads): their defaults, their flags' help, their checks, and which of them
change the output pixels.

Rules:
- A forward setting is named here once. A stage config declares its flags with :func:`flag` (the
  spec's default and help) and builds the spec with :meth:`InferenceSpec.from_config`; the spec, not
  the settings one by one, travels config -> actor -> forward passes.
- ``device`` "auto" and ``torch_threads`` 0 are left to the actor pool's plan (:meth:`placed`); a
  spec still "auto" when it reaches the forward passes runs where the model's weights are.
- ``precision`` "auto" is resolved by :meth:`placed` to what will run there (fp32 or bf16,
  :mod:`dae.precision`): on CPU from this machine's CPU flags; on CUDA bf16 (every GPU of the Ampere
  generation or newer has it; the actor warns where its GPU lacks it). A cluster whose CPU nodes
  differ from the driver's machine should say ``--precision`` explicitly.
- :meth:`fingerprint_fields` are the settings that change output pixels, by the names the denoise
  manifest records them under (torch_threads is not one: the manifest never recorded it).
- No torch at import: configs import this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import precision as _precision
from .precision import PRECISIONS

# Default cap on pixels per forward pass: 64 images of 28x28 go together, a photo goes alone. On CPU
# a 481x321 photo through a 16-wide U-Net takes 0.20 s alone and 0.31-0.36 s each in passes of 4-8
# (measured, 1 thread), and a chunk of 1 never pads: mixed sizes in a batch cost nothing extra.
FORWARD_PIXELS = 256 * 256
# Self-ensemble sizes (dae.forward.DIHEDRAL: the first N flips/rotations).
ENSEMBLES = (1, 2, 4, 8)


@dataclass(frozen=True)
class InferenceSpec:
    tile: int = 512
    tile_overlap: int = 32
    forward_batch: int = 64
    forward_pixels: int = FORWARD_PIXELS
    deterministic: bool = True
    precision: str = "auto"  # auto, fp32, bf16 (dae.precision)
    ensemble: int = 1
    device: str = "auto"  # auto, cpu, cuda (or a torch device such as cuda:1)
    torch_threads: int = 0  # 0: leave torch's thread count as it is

    @classmethod
    def from_config(cls, cfg, **overrides) -> InferenceSpec:
        """The spec of a stage config: its fields of the same names, then ``overrides``."""
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)}
        return cls(**{**values, **overrides})

    def placed(self, device: str, torch_threads: int | None = None) -> InferenceSpec:
        """This spec on the device (and with the threads) an actor pool's plan chose."""
        threads = self.torch_threads if torch_threads is None else torch_threads
        return dataclasses.replace(self, device=str(device), torch_threads=threads,
                                   precision=resolve_precision(self.precision, str(device)))

    def fingerprint_fields(self) -> dict:
        """The settings that change output pixels, as the denoise manifest names them (placed specs only:
        the device is part of them)."""
        if self.device == "auto" or self.precision == "auto":
            raise ValueError("an unplaced inference spec (device or precision auto) has no fingerprint")
        return {"tile": self.tile, "tile_overlap": self.tile_overlap, "forward_batch": self.forward_batch,
                "forward_pixels": self.forward_pixels, "deterministic": self.deterministic,
                "device": self.device, "precision": self.precision, "ensemble": self.ensemble}

    def check(self) -> InferenceSpec:
        """One-line errors naming the flags; returns the spec."""
        for name in ("forward_batch", "tile", "forward_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.torch_threads < 0:
            raise ValueError(f"--torch-threads must be >= 0, got {self.torch_threads}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"--ensemble must be one of {', '.join(map(str, ENSEMBLES))}, got {self.ensemble}")
        if not 0 <= self.tile_overlap < self.tile:
            raise ValueError(f"--tile-overlap must be in [0, tile={self.tile}), got {self.tile_overlap}")
        return self


HELP = {
    "tile": "images larger than TILE x TILE are denoised in tiles",
    "tile_overlap": "pixels shared by neighbouring tiles (blended)",
    "forward_batch": "images (or tiles) per forward pass",
    "forward_pixels": "cap on pixels per forward pass (a bigger image goes alone)",
    "deterministic": "pad partial forward passes to a fixed size so results never depend on batching",
    "precision": _precision.HELP,
    "ensemble": "self-ensemble: average the model's outputs over 1, 2, 4 or 8 flips/rotations "
                "(+0.1-0.2 dB for N x the model time)",
}


def resolve_precision(precision: str, device: str) -> str:
    """``precision`` on a planned ``device`` -> fp32 or bf16 (see the module's rules)."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16"
    return _precision.resolve("auto", device)


def flag(name: str, help: str | None = None, **metadata) -> dataclasses.Field:
    """A stage config's field for the forward setting ``name``: the spec's default, its help (or ``help``)."""
    default = InferenceSpec.__dataclass_fields__[name].default
    return dataclasses.field(default=default, metadata={"help": help if help is not None else HELP[name], **metadata})
