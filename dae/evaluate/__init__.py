"""The evaluate stage: every method (the noisy input, classical baselines, trained models) scored on
the same noisy images, side by side, on Ray Data.

    from dae.evaluate import EvaluateConfig, run
    report = run(EvaluateConfig(data="data/fm", out="runs/eval", models=("runs/m/best_model",)))

Modules: :mod:`.config` (the frozen config and its checks), :mod:`.select` (which images are
scored, tuned on, pictured), :mod:`.stages` (the pure Ray Data batch functions), :mod:`.scorer`
(the model actor and its pool), :mod:`.methods` (what is scored, by key and name),
:mod:`.aggregate` (rows -> per-method numbers and checks), :mod:`.report` (pictures, report.json,
report.md), :mod:`.pipeline` (tuning, the pipeline, ``run``).
"""

from .aggregate import Scores, aggregate, collect
from .config import EvaluateConfig, check_config, check_model_channels
from .methods import Methods
from .pipeline import block_rows, build_dataset, run, tune_baselines
from .report import bm3d_note, make_pictures, package_versions, render_markdown, report_command, write_report
from .scorer import ModelScorer, denoise, plan_model_actors
from .select import Selection, select_images
from .stages import METRICS, NOISY, array_hash, baseline_batch, noisy_batch, score_images, select_rows

__all__ = ["METRICS", "NOISY", "EvaluateConfig", "Methods", "ModelScorer", "Scores", "Selection", "aggregate",
           "array_hash", "baseline_batch", "block_rows", "bm3d_note", "build_dataset", "check_config",
           "check_model_channels", "collect", "denoise", "make_pictures", "noisy_batch", "package_versions",
           "plan_model_actors", "render_markdown", "report_command", "run", "score_images", "select_images",
           "select_rows", "tune_baselines", "write_report"]
