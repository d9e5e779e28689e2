"""The train stage: data-parallel training of denoising autoencoders on Ray Train (TorchTrainer, Train V2).

    python -m jobs.train --data shards/fashion --model conv28k --noise gaussian:0.5 --workers 2
    # or from Python:
    from dae.train import TrainConfig, run
    result = run(TrainConfig(data="shards/fashion", model="conv28k", noise="gaussian:0.5", workers=2))

Modules, one concern each:
  :mod:`.config`      TrainConfig, check_config, the resume rules (RESUME_SAME, RESUME_FREE, check_resume),
                      the run's objective (objective_of), LoopConfig (what every worker gets)
  :mod:`.plan`        plan_resources: CPUs and threads per worker from the live nodes
  :mod:`.data`        the splits (describe_split, describe_data), the Ray Datasets, each rank's rows,
                      crops, n2n's real pairs and batches
  :mod:`.loop`        train_loop_per_worker over train_one_epoch, validate and report_epoch
  :mod:`.checkpoint`  save_checkpoint, restore, init_weights, export_model, stored_run_config
  :mod:`.report`      metrics.jsonl, curves.png, samples.png (rank 0 redraws them every epoch), the epoch
                      lines, format_summary, rank 0's trackers
  :mod:`.tracking`    experiment tracking (no Ray): Tracker, TensorBoardTracker (every run), MlflowTracker
                      (--tracker mlflow), read_scalars
  :mod:`.run`         run(cfg): the driver

The objective (supervised, n2n, nb2nb, n2v, or a plug-in) is an object from dae.objectives: the stage
hands it the config's values and calls it; it checks, draws and computes the rest.

Outputs (``out``, default the run directory ``STORAGE/RUN_NAME`` where Ray Train keeps its
checkpoints): ``best_model/`` (best validation PSNR; the last epoch on noisy-only data), ``final_model/``
(last epoch), ``metrics.jsonl``, ``curves.png``, ``samples.png``, ``config.resolved.json``, ``summary.json``,
``tensorboard/`` (``tensorboard --logdir STORAGE``); with ``--tracker mlflow`` the run is also an MLflow
run at MLFLOW_TRACKING_URI (its id in ``RUN_DIR/mlflow.json``).
A rerun with the same run name and storage continues from the run's latest checkpoint; it must keep the
run's RESUME_SAME settings (checked on the driver before anything starts); epochs may grow.

Noisy-only data (``jobs.prepare --noisy``: no clean images) trains with ``--objective nb2nb`` or ``n2v``
(or n2n with ``--pair-data``) and ``--noise none``; validation then reports the held-out loss of the
objective and the residual's std (validate_noisy) instead of PSNR/SSIM.
"""

from ..objectives import LOSSES, make_loss
from .checkpoint import TrainState, export_model, init_weights, restore, save_checkpoint, stored_run_config
from .config import (
    MODES,
    OPTIMIZERS,
    RESUME_FREE,
    RESUME_SAME,
    SCHEDULES,
    LoopConfig,
    TrainConfig,
    check_config,
    check_init,
    check_objective,
    check_resume,
    make_objective,
    objective_inputs,
    objective_of,
    resume_conflicts,
)
from .data import (
    STREAM_TASK_CPUS,
    TrainData,
    Validation,
    batches,
    check_noisy_only,
    describe_data,
    describe_split,
    load_train,
    load_validation,
    make_datasets,
    random_crop,
    random_crops,
    reduce_sums,
    samples_per_epoch,
    split_pairs,
)
from .loop import (
    make_optimizer,
    make_scheduler,
    report_epoch,
    setup_worker,
    sync_buffers,
    train_and_validate,
    train_loop_per_worker,
    train_one_epoch,
    validate,
    validate_noisy,
)
from .plan import plan_resources
from .report import (
    COLLAPSE_SPREAD,
    REPORTED,
    collapse_message,
    collapsed,
    format_summary,
    save_samples,
    score_metric,
    val_line,
    write_metrics,
)
from .run import run
from .tracking import TRACKERS, MlflowTracker, TensorBoardTracker, Tracker, read_scalars

__all__ = [
    "COLLAPSE_SPREAD", "LOSSES", "MODES", "OPTIMIZERS", "REPORTED", "RESUME_FREE", "RESUME_SAME", "SCHEDULES",
    "STREAM_TASK_CPUS", "TRACKERS", "LoopConfig", "MlflowTracker", "TensorBoardTracker", "Tracker", "TrainConfig",
    "TrainData", "TrainState", "Validation", "batches", "check_config", "check_init", "check_noisy_only",
    "check_objective", "check_resume", "collapse_message", "collapsed", "describe_data", "describe_split",
    "export_model", "format_summary", "init_weights", "load_train", "load_validation", "make_datasets", "make_loss",
    "make_objective", "make_optimizer", "make_scheduler", "objective_inputs", "objective_of", "plan_resources",
    "random_crop", "random_crops", "read_scalars", "reduce_sums", "report_epoch", "restore", "resume_conflicts",
    "run", "samples_per_epoch", "save_checkpoint", "save_samples", "score_metric", "setup_worker", "split_pairs",
    "stored_run_config", "sync_buffers", "train_and_validate", "train_loop_per_worker", "train_one_epoch", "val_line",
    "validate", "validate_noisy", "write_metrics",
]
