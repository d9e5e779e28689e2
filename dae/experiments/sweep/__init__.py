"""The project's quality table: seed models, the best model, a blind model and the classical
denoisers on the same noisy images, over datasets and noise levels, with the quality targets checked.

    from dae.experiments.sweep import SweepConfig, run
    result = run(build_config(SweepConfig, {"out": "runs/quality"}, preset="quality-sweep-cpu"))

    python -m jobs.quality_sweep --config quality-sweep --out runs/quality        # the full grid (GPU)
    python -m jobs.quality_sweep --config quality-sweep-cpu --out runs/quality    # what fits a 2-core CPU
    python -m jobs.quality_sweep --config quality-sweep --dry-run                 # print the plan only

On a Ray cluster: ``ray job submit --working-dir . -- python -m jobs.quality_sweep --config
quality-sweep --out s3://bucket/quality --gpus-per-worker 1``.

Steps, each one a library stage called with its config object, each skipped when its output is
already there (a stopped sweep picks up where it stopped; a changed setting fails instead of mixing
results):

1. prepare every dataset of the grid (``dae.prepare.run``) -> ``OUT/data/NAME``;
2. train every cell (dataset, model, noise) of the grid (``dae.train.run``, Ray Train), every model
   of a dataset with the same epochs, data, optimizer and schedule (the loss is the model entry's:
   the two Keras seeds use their notebooks' binary cross-entropy) -> ``OUT/runs/NAME/TAG-NOISE/``;
   plus the best model trained blind on ``--blind`` (a range of levels) on every dataset;
3. score, per dataset, every model and the classical baselines on the same noisy test images
   (``dae.evaluate.run`` on Ray Data) -> ``OUT/eval/NAME/report.md`` and comparison pictures;
4. write ``OUT/quality.md`` / ``quality.json``: one table per dataset (mean per-image PSNR for
   every method, each model at the level it was trained for, the blind one at every level of its
   range) and the quality targets, met or missed by how much.

Models are scored as they were after their last epoch (``final_model``): the train job validates
on the test split, so its best-on-validation checkpoint would be chosen on the scored images.

Modules: :mod:`.config` (the config, the plan of cells, the stages' configs), :mod:`.steps` (the run),
:mod:`.table` (the table, the targets, the charts, quality.md). The defaults of ``models`` and
``datasets`` are ``recipes/quality-sweep.yaml``.
"""

from ..reuse import SAME_RUN, evaluate_or_reuse, prepare_or_reuse, train_or_reuse
from .config import (
                   DATASETS,
                   LEVELS,
                   MODELS,
                   Cell,
                   SweepConfig,
                   epochs_of,
                   in_range,
                   loss_of,
                   losses_text,
                   plan,
                   prepare_config,
                   train_config,
)
from .steps import evaluate_dataset, prepare_dataset, run, train_cell
from .table import check_targets, collect, column, render, save_charts

__all__ = ["DATASETS", "LEVELS", "MODELS", "SAME_RUN", "Cell", "SweepConfig", "check_targets", "collect", "column",
           "epochs_of", "evaluate_dataset", "evaluate_or_reuse", "in_range", "loss_of", "losses_text", "plan",
           "prepare_config", "prepare_dataset", "prepare_or_reuse", "render", "run", "save_charts", "train_cell",
           "train_config", "train_or_reuse"]
