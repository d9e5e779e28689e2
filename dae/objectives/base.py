"""What an objective is: the :class:`Objective` base class, its options (:class:`Option`) and the
training losses (``--loss``) an objective may be computed with. Pure PyTorch, no Ray.

An objective
  * DECLARES what each training sample needs (``needs``: a clean target, two noisy images of the
    scene, or a single noisy image), the losses it is defined with (``losses``) and its options
    (``options``, the train job's ``--objective-kwargs``);
  * CHECKS a training setup against them (:meth:`Objective.check_training`, and
    :meth:`Objective.check_noisy_only` for data with no clean images);
  * DRAWS its per-sample inputs (:meth:`Objective.draw`: a second noise draw, sub-sampler cells,
    blind spots) from (seed, id, epoch);
  * COMPUTES its training loss (:meth:`Objective.train_loss`) and its held-out loss
    (:meth:`Objective.held_out_loss`, what validation reports on data with no clean images).

Rules it keeps:
  * a model is called ``run(x, sigma)``: ``x`` (B, C, H, W) float, ``sigma`` (B,) per-image noise sigma
    on the 0-1 scale (ignored by models that are not noise-level conditioned), float32 out;
  * per-sample randomness comes from ``image_rng(seed, PURPOSE:id, epoch)`` only, never from batch
    position, so it does not depend on batch size or worker count; :meth:`draw` makes it on the CPU,
    the losses move it to the device of ``noisy``;
  * no Ray and no ``dae.train``: the train stage hands an objective plain values (the loss name, the
    noise spec, the epochs, the options), so the objectives stay testable alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..noise import NoiseSpec
from .registry import get_objective, list_objectives

LOSSES = ("mse", "l1", "bce")
NEEDS = ("clean", "pairs", "noisy")

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn(output, target)`` of a ``--loss`` name."""
    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    # bce on a [0, 1] output (sigmoid or clamp); clamp keeps log() finite for residual models
    return lambda out, target: F.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), target)


def nchw(a: np.ndarray) -> torch.Tensor:
    """(B, H, W, C) numpy -> (B, C, H, W) float32 torch, contiguous."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32).transpose(0, 3, 1, 2)))


@dataclass(frozen=True)
class Option:
    """One option of an objective: a key of ``--objective-kwargs``. Values are cast to the default's type,
    then checked: one of ``choices``, or ``valid(value)`` (``rule`` says what a valid value is)."""

    default: Any
    help: str = ""
    choices: tuple = ()
    valid: Callable[[Any], bool] | None = None
    rule: str = ""  # "must be in (0, 1)": the error reads "LABEL must be in (0, 1), got 0"
    flag: str = ""  # the older train flag (a TrainConfig field) that gives its default, e.g. n2v_fraction

    def check(self, value: Any, label: str) -> Any:
        """``value`` cast and checked; a one-line ValueError naming ``label`` (a flag) otherwise."""
        kind = type(self.default)
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{label} must be a {kind.__name__}, got {value!r}") from None
        if self.choices and value not in self.choices:
            raise ValueError(f"unknown {label} {value!r}; valid: {', '.join(map(str, self.choices))}")
        if self.valid is not None and not self.valid(value):
            shown = f"{value:g}" if isinstance(value, float) else repr(value)
            raise ValueError(f"{label} {self.rule}, got {shown}")
        return value


class Objective:
    """A training objective. Subclasses set the class attributes, implement :meth:`train_loss` and,
    when they need more than the noisy batch, :meth:`draw`; ``@register_objective`` makes them an
    ``--objective``."""

    name: ClassVar[str] = ""  # the --objective name
    title: ClassVar[str] = ""  # the method's name in messages, e.g. "Noise2Noise"
    # What each training sample needs: "clean" (a clean target: data with clean images), "pairs" (two
    # independent noisy images of the scene: synthesized from clean images, or real ones from
    # --pair-data), "noisy" (a single noisy image)
    needs: ClassVar[str] = "clean"
    losses: ClassVar[tuple[str, ...]] = LOSSES  # the --loss values it is defined with
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, loss: str = "mse", noise: NoiseSpec | str = "none", epochs: int = 1, **kwargs):
        self.check_loss(loss)
        unknown = set(kwargs) - set(self.options)
        if unknown:
            raise ValueError(f"unknown argument(s) {sorted(unknown)} for objective {self.name!r}; "
                             f"valid: {', '.join(self.options) or 'none'}")
        self.loss_name, self.noise, self.epochs = loss, NoiseSpec.parse(noise), epochs
        self.loss_fn = make_loss(loss)
        # every option, checked, its default where not given
        self.kwargs = {k: opt.check(kwargs.get(k, opt.default), f"--objective-kwargs {k}")
                       for k, opt in self.options.items()}

    # ---- declarations, checked against a training setup

    @classmethod
    def check_loss(cls, loss: str) -> None:
        if loss not in cls.losses:
            names = " or ".join(x.upper() for x in cls.losses)
            raise ValueError(f"--objective {cls.name} is defined with the {names} loss, got --loss {loss}")

    @classmethod
    def check_training(cls, loss: str, noise: NoiseSpec | str, pair_data: bool) -> None:
        """The loss must be one the objective is defined with; --pair-data (real second noisy images)
        is for an objective that takes pairs, on the images as they are (``--noise none``)."""
        cls.check_loss(loss)
        if pair_data and (cls.needs != "pairs" or not NoiseSpec.parse(noise).none):
            takers = [get_objective(n) for n in list_objectives() if get_objective(n).needs == "pairs"]
            raise ValueError(f"--pair-data gives {' or '.join(c.title for c in takers)} its second noisy images: "
                             f"use it with --objective {' or '.join(c.name for c in takers)} and --noise none, got "
                             f"--objective {cls.name} --noise {noise}")

    @classmethod
    def check_noisy_only(cls, data: str, pair_data: bool) -> None:
        """Training data with no clean version (prepared with --noisy): refused when a sample needs
        what that data lacks, naming the objectives that learn from single noisy images."""
        singles = " or ".join(n for n in list_objectives() if get_objective(n).needs == "noisy")
        if cls.needs == "clean":
            raise ValueError(f"{data} holds noisy images with no clean version (prepared with --noisy): --objective "
                             f"{cls.name} needs clean targets; train with --objective {singles} (from single noisy "
                             "images)")
        if cls.needs == "pairs" and not pair_data:
            raise ValueError(f"{data} holds single noisy images (prepared with --noisy): --objective {cls.name} needs "
                             "two noisy images of each scene: give the second ones with --pair-data ROOT (same ids), "
                             f"or train with --objective {singles}")

    # ---- per batch

    def draw(self, clean: np.ndarray, ids: Sequence[str], seed: int, epoch: int,
             target: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """What the loss needs besides the noisy batch, as CPU tensors, from (seed, id, epoch) per sample.
        ``clean`` (B, H, W, C) gives the shape (only an objective that needs clean images or synthesizes
        a second noise draw may read its pixels); ``target``: real second noisy images (--pair-data)."""
        return {}

    def train_loss(self, run: Model, clean: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor,
                   extra: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
        """The loss of one training step of epoch ``epoch`` (counted from 0)."""
        raise NotImplementedError

    def held_out_loss(self, run: Model, noisy: torch.Tensor, sigma: torch.Tensor,
                      extra: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss on held-out noisy images with no clean version (the noisy images stand in for the
        clean ones): the training loss of epoch 0."""
        return self.train_loss(run, noisy, noisy, sigma, extra, 0)

    def loss_at(self, epoch: int) -> Callable[..., torch.Tensor]:
        """The step's loss of epoch ``epoch``, ``fn(run, clean, noisy, sigma, extra)``."""
        return functools.partial(self.train_loss, epoch=epoch)
