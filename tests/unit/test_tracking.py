"""dae.train.tracking without Ray: TensorBoard event files (read back from the files), their trim on
resume, a URI output, the per-epoch figures, and MLflow against a real local tracking server (started
here, read back through MlflowClient)."""

import os

import numpy as np
import pytest


def rows(*epochs):
    return [{"epoch": e, "train_loss": 1.0 / e, "val_psnr": 20.0 + e, "lr": 0.01, "images_per_s": 100.0 * e,
             "precision": "fp32", "attempt": 0} for e in epochs]


def images_of(logdir):
    from dae.train.tracking import read_events

    out = []
    for name in sorted(os.listdir(logdir)):
        for ev in read_events(open(os.path.join(logdir, name), "rb").read()):
            out += [(v.tag, ev.step, v.image.height) for v in ev.summary.value if v.WhichOneof("value") == "image"]
    return out


def train(tracker, epochs, steps_per_epoch=4, every=2, image=True):
    """What rank 0 does: step figures every ``every`` steps, then the epoch's row and samples grid."""
    for row in rows(*epochs):
        first = (row["epoch"] - 1) * steps_per_epoch
        for s in range(every, steps_per_epoch + 1, every):
            tracker.log_step(first + s, {"train_loss": row["train_loss"] + s, "lr": 0.01})
        tracker.log_epoch(row, {"samples": np.full((6, 9, 3), 128, np.uint8)} if image else None)


def test_tensorboard_scalars_and_images_every_epoch(tmp_path):
    from dae.train.tracking import TB_DIR, TensorBoardTracker, read_scalars

    tb = TensorBoardTracker(str(tmp_path), steps_per_epoch=4)
    tb.start(params={"model": "dncnn", "lr": 0.01})
    train(tb, [1, 2])
    tb.end()
    sc = read_scalars(str(tmp_path / TB_DIR))
    assert sc["epoch/train_loss"] == [(1, 1.0), (2, 0.5)]
    assert sc["epoch/val_psnr"] == [(1, 21.0), (2, 22.0)]
    assert [s for s, _ in sc["epoch/images_per_s"]] == [1, 2] and "epoch/precision" not in sc
    assert [s for s, _ in sc["step/train_loss"]] == [2, 4, 6, 8]  # global steps: (epoch - 1) * 4 + step
    assert images_of(tmp_path / TB_DIR) == [("samples", 1, 6), ("samples", 2, 6)]


def test_a_resumed_run_appends_without_repeating_a_step(tmp_path):
    """Attempt 0 logs epochs 1-3, but its checkpoint holds 2 epochs (it died after logging epoch 3):
    attempt 1 cuts epoch 3 and its steps from the stored file and logs them once more."""
    from dae.train.tracking import TB_DIR, TensorBoardTracker, read_scalars

    first = TensorBoardTracker(str(tmp_path), steps_per_epoch=4, attempt=0)
    first.start(params={"lr": 0.01})
    train(first, [1, 2, 3])
    first.end()
    again = TensorBoardTracker(str(tmp_path), steps_per_epoch=4, attempt=1)
    again.start(params={"lr": 0.01}, done=rows(1, 2))
    train(again, [3, 4])
    again.end()
    assert len(os.listdir(tmp_path / TB_DIR)) == 2  # one event file per attempt
    sc = read_scalars(str(tmp_path / TB_DIR))
    assert [s for s, _ in sc["epoch/train_loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in sc["step/train_loss"]] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert [(t, s) for t, s, _ in images_of(tmp_path / TB_DIR)] == [("samples", e) for e in (1, 2, 3, 4)]


def test_epochs_missing_from_the_files_are_written_from_the_history(tmp_path):
    """A resumed run writing to another --out (or one that died between checkpoint and log): the epochs
    it has done are in the new files too."""
    from dae.train.tracking import TB_DIR, TensorBoardTracker, read_scalars

    tb = TensorBoardTracker(str(tmp_path), steps_per_epoch=4, attempt=2)
    tb.start(done=rows(1, 2))
    train(tb, [3])
    tb.end()
    assert [s for s, _ in read_scalars(str(tmp_path / TB_DIR))["epoch/val_psnr"]] == [1, 2, 3]


def test_tensorboard_on_a_uri_is_uploaded_every_epoch(tmp_path):
    """On a URI output (s3://... in production; file:// here) the events are written in a local folder and
    uploaded whole with dae.storage after every epoch, so the run dir has them while the run goes on."""
    from dae.train.tracking import TB_DIR, TensorBoardTracker, read_scalars

    out = f"file://{tmp_path}/run"
    tb = TensorBoardTracker(out, steps_per_epoch=4)
    tb.start()
    train(tb, [1])
    assert [s for s, _ in read_scalars(f"{out}/{TB_DIR}")["epoch/train_loss"]] == [1]  # before end()
    train(tb, [2])
    tb.end()
    assert [s for s, _ in read_scalars(f"{out}/{TB_DIR}")["epoch/train_loss"]] == [1, 2]
    assert len(os.listdir(tmp_path / "run" / TB_DIR)) == 2  # one file per epoch, each uploaded once
    assert not os.path.exists(tb.logdir)  # the local folder is gone
    resumed = TensorBoardTracker(out, steps_per_epoch=4, attempt=1)
    resumed.start(done=rows(1))
    resumed.end()
    assert [s for s, _ in read_scalars(f"{out}/{TB_DIR}")["epoch/train_loss"]] == [1]


def test_tracker_choices_and_missing_packages(monkeypatch):
    import importlib.util

    from dae.train import TrainConfig, check_config
    from dae.train.tracking import check_tracker, tracking_uri

    with pytest.raises(ValueError, match="unknown --tracker 'wandb': choose one of none, mlflow"):
        check_config(TrainConfig(data="shards", tracker="wandb"))
    with pytest.raises(ValueError, match="--log-every-steps must be >= 0"):
        check_config(TrainConfig(data="shards", log_every_steps=-1))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(RuntimeError, match=r"pip install 'dae\[mlflow\]'"):
        check_tracker("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI, which is not set"):
        tracking_uri()


def test_figures_are_redrawn_every_epoch(tiny_shards, tmp_path):
    """Rank 0's EpochFigures: curves.png with the history so far, samples.png with the model as it is,
    and the grid (the trackers' image)."""
    import torch

    from dae.models import create_model
    from dae.shards import list_shards
    from dae.train import TrainConfig
    from dae.train.report import EpochFigures

    root = tiny_shards(n_test=5)
    cfg = TrainConfig(data=root, model="conv28k", samples=3)
    figs = EpochFigures(cfg, str(tmp_path), list_shards(root, "test"), clean_val=True)
    torch.manual_seed(0)
    model = create_model("conv28k", channels=1)
    grid = figs.draw(rows(1), model)["samples"]
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    os.utime(tmp_path / "curves.png", (0, 0))
    assert figs.draw(rows(1, 2), model)["samples"].shape == grid.shape
    assert os.path.getmtime(tmp_path / "curves.png") != 0  # redrawn
    assert model.training  # put back in training mode
    assert os.path.exists(tmp_path / "samples.png")


# ---------------------------------------------------------------- MLflow, against a real server


def test_mlflow_run_params_metrics_artifacts_and_resume(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from dae.train.tracking import MLFLOW_RUN_FILE, MlflowTracker

    run_dir = str(tmp_path / "runs" / "r1")
    os.makedirs(os.path.join(run_dir, "best_model"))
    for name, text in (("curves.png", "png"), ("best_model/config.json", "{}"),
                       ("best_model/model.safetensors", "w")):
        with open(os.path.join(run_dir, name), "w") as fh:
            fh.write(text)
    t = MlflowTracker.open(run_dir, "dae-test", "r1", mlflow_server.uri)
    t.start(params={"model": "dncnn", "lr": 0.01, "model_kwargs": {"depth": 5}})
    for row in rows(1, 2):
        t.log_epoch(row)
    t.log_artifacts({"curves.png": os.path.join(run_dir, "curves.png"),
                     "best_model": os.path.join(run_dir, "best_model"),
                     "figures/config.txt": os.path.join(run_dir, "best_model", "config.json"),
                     "missing.png": os.path.join(run_dir, "missing.png")})  # not there: skipped
    t.end()

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert client.get_experiment(run.info.experiment_id).name == "dae-test"
    assert run.data.params == {"model": "dncnn", "lr": "0.01", "model_kwargs": "{'depth': 5}"}
    assert [(m.step, m.value) for m in client.get_metric_history(t.run_id, "val_psnr")] == [(1, 21.0), (2, 22.0)]
    assert "precision" not in run.data.metrics and "epoch" not in run.data.metrics
    assert sorted(a.path for a in client.list_artifacts(t.run_id)) == ["best_model", "curves.png", "figures"]
    assert sorted(a.path for a in client.list_artifacts(t.run_id, "best_model")) == [
        "best_model/config.json", "best_model/model.safetensors"]
    assert [a.path for a in client.list_artifacts(t.run_id, "figures")] == ["figures/config.txt"]
    assert os.path.exists(os.path.join(run_dir, MLFLOW_RUN_FILE))

    # A rerun of the run dir continues the same MLflow run: params kept (MLflow refuses changes; a new
    # setting is added), the epochs it lacks written from the history, the new ones appended.
    again = MlflowTracker.open(run_dir, "dae-test", "r1", mlflow_server.uri)
    assert again.run_id == t.run_id and client.get_run(t.run_id).info.status == "RUNNING"
    again.start(params={"model": "dncnn", "lr": 0.02, "epochs": 3}, done=rows(1, 2, 3))
    again.log_epoch(rows(4)[0])
    again.end("FAILED")
    run = client.get_run(t.run_id)
    assert run.info.status == "FAILED" and run.data.params["lr"] == "0.01" and run.data.params["epochs"] == "3"
    assert [m.step for m in client.get_metric_history(t.run_id, "train_loss")] == [1, 2, 3, 4]

    # The rank-0 tracker logs metrics only: it does not end the run the driver owns.
    MlflowTracker(t.run_id, mlflow_server.uri, ends_run=False).end()
    assert client.get_run(t.run_id).info.status == "FAILED"
