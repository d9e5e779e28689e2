"""The denoise stage: streaming batch inference on Ray Data; Ray workers write the outputs.

    from dae.denoise import DenoiseConfig, run, read_outputs
    summary = run(DenoiseConfig(input="data/fm", split="test", model="runs/m/best_model", output="out/d"))
    table = read_outputs("out/d")            # the committed rows (pyarrow.Table), one per input row
    run(DenoiseConfig(input="~/photos", model="pretrained:auto", output="out/p", export="out/photos"))
                                             # image files in (ids: their paths), photos out

Modules: :mod:`.config` (the frozen config), :mod:`.scan` (listing, row counts, channel and
duplicate-id checks as Ray tasks), :mod:`.pipeline` (the Ray Data pipeline and the driver's books),
:mod:`.outputs` (the output layout and its rules, the worker-side writer, the driver's books),
:mod:`.commits` (markers, commits, retirements, clean-up), :mod:`.reader`, :mod:`.manifest` (the
run's settings), :mod:`.rerun` (what a rerun does), :mod:`.lease` (one writer); for image files as input
:mod:`.files` (the input's kind, the compact listing, commit groups, the workers' read stage),
:mod:`.auto` (``pretrained:auto``, rows of several channel counts) and :mod:`.export` (``--export``).
"""

from .config import DenoiseConfig, validate
from .reader import committed_parts, read_outputs

__all__ = ["DenoiseConfig", "committed_parts", "read_outputs", "run", "validate"]


def __getattr__(name: str):
    # run on first use: the workers' tasks import this package for its modules (scan, outputs, export,
    # files), and the pipeline module brings torch with it (dae.inference says why that matters).
    if name == "run":
        from .pipeline import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
