"""The denoise stage: streaming batch inference on Ray Data; Ray workers write the outputs.

    from dae.denoise import DenoiseConfig, run, read_outputs
    summary = run(DenoiseConfig(input="data/fm", split="test", model="runs/m/best_model", output="out/d"))
    table = read_outputs("out/d")            # the committed rows (pyarrow.Table), one per input row

Modules: :mod:`.config` (the frozen config), :mod:`.scan` (listing, row counts, channel and
duplicate-id checks as Ray tasks), :mod:`.pipeline` (the Ray Data pipeline and the driver's books),
:mod:`.outputs` (the output layout, the worker-side writer, markers, the reader).
"""

from .config import DenoiseConfig, validate
from .outputs import committed_parts, read_outputs
from .pipeline import run

__all__ = ["DenoiseConfig", "committed_parts", "read_outputs", "run", "validate"]
