"""Training objectives for denoisers, as plug-ins: supervised and self-supervised, pure PyTorch (no Ray).

    from dae.objectives import get_objective, list_objectives
    objective = get_objective("nb2nb")(loss="mse", noise="awgn:25", epochs=10, gamma=2.0)
    extra = objective.draw(clean, ids, seed, epoch)                  # from (seed, id, epoch) per sample
    loss = objective.train_loss(run, clean, noisy, sigma, extra, epoch)
    python -m jobs.train --objective nb2nb --objective-kwargs '{gamma: 1.0}' --noise none --data ...

    supervised  the loss between f(noisy) and the clean image. Needs clean targets.
    n2n         Noise2Noise: towards a second, independent noisy draw of the same image (synthesized,
                or the real second shots of --pair-data).
    nb2nb       Neighbor2Neighbor: two sub-images of one noisy image, one the other's target, plus a
                regulariser. From single noisy images.
    n2v         Noise2Void: blind spots predicted from their surroundings. From single noisy images.

Modules: :mod:`.base` (the :class:`Objective` base class: what an objective declares, checks, draws
and computes; its options; the losses), :mod:`.registry` (``register_objective``, ``get_objective``,
``list_objectives``), and one module per objective, with the paper, its assumptions and its arithmetic:
:mod:`.supervised`, :mod:`.n2n`, :mod:`.nb2nb`, :mod:`.n2v`.

A new objective is one new module in this package: a subclass of :class:`Objective` decorated with
``@register_objective``. Every module here is imported with the package (the built-ins first, in the
order ``--objective`` lists them), so the train job takes it as ``--objective NAME`` with its options
in ``--objective-kwargs``; no other file changes. An objective defined outside this package is
registered before ``dae.train`` is imported (the flag's choices are read then).
"""

import importlib
import pkgutil

# isort: off
# The built-ins, imported (so registered) in the order --objective lists them: not sorted.
from . import supervised, n2n, nb2nb, n2v  # noqa: F401
# isort: on
from .base import LOSSES, Model, Objective, Option, make_loss
from .n2n import n2n_loss
from .n2v import N2V_CHANNELS, N2V_FRACTION, n2v_apply, n2v_loss, n2v_masks
from .nb2nb import nb2nb_choices, nb2nb_gamma, nb2nb_loss, nb2nb_subsample
from .registry import get_objective, list_objectives, register_objective
from .supervised import supervised_loss

for _mod in pkgutil.iter_modules(__path__):  # any other module of the package: an objective it registers
    importlib.import_module(f"{__name__}.{_mod.name}")

OBJECTIVES = tuple(list_objectives())  # the objectives of this package, as --objective lists them

__all__ = ["LOSSES", "Model", "N2V_CHANNELS", "N2V_FRACTION", "OBJECTIVES", "Objective", "Option", "get_objective",
           "list_objectives", "make_loss", "n2n_loss", "n2v_apply", "n2v_loss", "n2v_masks", "nb2nb_choices",
           "nb2nb_gamma", "nb2nb_loss", "nb2nb_subsample", "register_objective", "supervised_loss"]
