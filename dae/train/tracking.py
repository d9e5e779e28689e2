"""Experiment tracking of a training run: one small interface (:class:`Tracker`: start, log_step,
log_epoch, log_artifacts, end) and two implementations, TensorBoard event files in the run's output
dir (every run) and an MLflow run on the server at ``MLFLOW_TRACKING_URI`` (``--tracker mlflow``).

    OUT/tensorboard/events.out.tfevents.*   tensorboard --logdir OUT (or STORAGE: every run a folder)
        epoch/<figure>   every numeric figure of the epoch's metrics.jsonl row, at step = epoch
        step/train_loss  rank 0's batch loss and lr every --log-every-steps optimizer steps, at
        step/lr          step = (epoch - 1) * steps per epoch + step in the epoch (from the epoch: a
                         resumed run continues the same axis)
        samples          samples.png's grid (clean, noisy, denoised) at step = epoch
    RUN_DIR/mlflow.json  the MLflow run of this run dir: a rerun continues that MLflow run

    tb = TensorBoardTracker("runs/r1", steps_per_epoch=8)
    tb.start(done=history_so_far)          # a resumed run: events after its checkpoint are dropped
    tb.log_step(3, {"train_loss": 0.01})
    tb.log_epoch(row, images={"samples": grid_hwc_uint8})
    tb.end()

Rules it keeps:
  * no Ray here: the train loop's rank 0 and the driver call these; tests call them directly;
  * the event files reach any storage (s3://...) the way metrics.jsonl does: written whole with
    dae.storage (on a URI, the writer's local folder is uploaded after every epoch);
  * a resumed run appends and never repeats a step: at start, events of steps its checkpoint does not
    hold (a failed attempt's partial epoch) are cut from the stored files, and epochs done but not in
    them (another --out, a crash between checkpoint and log) are written from the history;
  * MLflow params never change (MLflow refuses): a rerun logs only settings new to the run; the run's
    current config.resolved.json is an artifact.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import numbers
import os
import shutil
import struct
import tempfile
import time
from typing import Iterator, Sequence

import numpy as np

from .. import storage

log = logging.getLogger("dae")

TRACKERS = ("none", "mlflow")
TB_DIR = "tensorboard"
MLFLOW_RUN_FILE = "mlflow.json"
MLFLOW_INSTALL = "pip install 'dae[mlflow]'"
PARAM_MAX = 6000  # MLflow's longest param value


def check_tracker(name: str) -> None:
    """--tracker: a known one, with its package installed (checked without importing it)."""
    if name not in TRACKERS:
        raise ValueError(f"unknown --tracker {name!r}: choose one of {', '.join(TRACKERS)}")
    if name == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise RuntimeError(f"--tracker mlflow needs the mlflow package, which is not installed: {MLFLOW_INSTALL}")


def numeric(row: dict) -> dict[str, float]:
    """The figures of a metrics row that are numbers (not the epoch, precision or flags)."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)}


class Tracker:
    """What a training run tells a tracker; this base one tells nobody (``--tracker none``).
    Steps: ``log_step``'s is the global optimizer step, ``log_epoch``'s the row's epoch (from 1)."""

    def start(self, params: dict | None = None, done: Sequence[dict] = ()) -> None:
        """Begin (or continue) the run: ``params`` the resolved settings, ``done`` the metrics rows of
        the epochs a resumed run has already done."""

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """Figures of one optimizer step."""

    def log_epoch(self, row: dict, images: dict[str, np.ndarray] | None = None) -> None:
        """An epoch's metrics row (metrics.jsonl's) and images, (H, W, 3) uint8 by name."""

    def log_artifacts(self, paths: dict[str, str]) -> None:
        """Files or folders (local paths or URIs) by artifact name, e.g. {"best_model": OUT/best_model}."""

    def end(self, status: str = "FINISHED") -> None:
        """FINISHED, or FAILED when the fit raised."""


class Trackers(Tracker):
    """Several trackers as one: each call goes to every one, in order."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    def start(self, params=None, done=()):
        for t in self.trackers:
            t.start(params, done)

    def log_step(self, step, values):
        for t in self.trackers:
            t.log_step(step, values)

    def log_epoch(self, row, images=None):
        for t in self.trackers:
            t.log_epoch(row, images)

    def log_artifacts(self, paths):
        for t in self.trackers:
            t.log_artifacts(paths)

    def end(self, status="FINISHED"):
        for t in self.trackers:
            t.end(status)


# ---------------------------------------------------------------- TensorBoard (tensorboardX)


def _records(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(whole record, payload) of each complete TFRecord in ``data``: u64 length, u32 crc, payload,
    u32 crc. A record cut short (a writer killed mid-write) ends the file."""
    pos = 0
    while pos + 12 <= len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + n + 4
        if end > len(data):
            return
        yield data[pos:end], data[pos + 12:pos + 12 + n]
        pos = end


def read_events(data: bytes) -> list:
    """The events of an event file's bytes (tensorboardX's Event protos), in file order."""
    from tensorboardX.proto.event_pb2 import Event

    return [Event.FromString(payload) for _, payload in _records(data)]


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every event file in ``logdir`` (a path or URI), sorted by step."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in storage.list_files(logdir):
        if ".tfevents." in os.path.basename(path):
            for ev in read_events(storage.read_bytes(path)):
                for v in ev.summary.value:
                    if v.WhichOneof("value") == "simple_value":
                        out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return {tag: sorted(points) for tag, points in out.items()}


class TensorBoardTracker(Tracker):
    """Event files in ``OUT/tensorboard``, written by tensorboardX: one file per attempt, in place, on
    a local ``out``; on a URI one file per epoch, written in a local folder and uploaded once, whole,
    after the epoch (object stores cannot append; re-uploading one growing file would cost
    epochs^2 / 2 file sizes)."""

    def __init__(self, out: str, steps_per_epoch: int, attempt: int = 0, flush_secs: int = 30):
        self.dest = storage.join(out, TB_DIR)
        self.remote = storage.is_uri(out)
        self.steps_per_epoch, self.attempt, self.flush_secs = steps_per_epoch, attempt, flush_secs
        self.writer = None
        self.logdir = ""
        self.files = 0

    def _writer(self):
        if self.writer is None:
            from tensorboardX import SummaryWriter

            # tensorboardX names a file by the second and the host: the suffix keeps attempts and files apart
            self.files += 1
            self.writer = SummaryWriter(self.logdir, filename_suffix=f".attempt{self.attempt}.{self.files:05d}",
                                        flush_secs=self.flush_secs)
        return self.writer

    def start(self, params=None, done=()):
        epochs_done = max((int(r["epoch"]) for r in done), default=0)
        kept = self._trim(epochs_done)
        self.logdir = tempfile.mkdtemp(prefix="dae-tb-") if self.remote else self.dest
        if params and ("config", 0) not in kept:
            text = "\n".join(f"    {k}: {v}" for k, v in sorted(params.items()))  # indented: markdown code
            self._writer().add_text("config", text, 0)
        for row in done:
            if ("epoch/train_loss", int(row["epoch"])) not in kept:
                self.log_epoch(row, sync=False)
        self._sync()

    def _keep(self, tag: str, step: int, epochs_done: int) -> bool:
        if tag.startswith("step/"):
            return step <= epochs_done * self.steps_per_epoch
        return step <= epochs_done

    def _trim(self, epochs_done: int) -> set[tuple[str, int]]:
        """Cuts the stored event files' events beyond the run's checkpoint (rewriting only files that
        hold some); returns the (tag, step) pairs they keep."""
        kept: set[tuple[str, int]] = set()
        if not storage.is_dir(self.dest):
            return kept
        from tensorboardX.proto.event_pb2 import Event

        for path in storage.list_files(self.dest):
            if ".tfevents." not in os.path.basename(path):
                continue
            data = storage.read_bytes(path)
            records, keep = list(_records(data)), []
            for raw, payload in records:
                ev = Event.FromString(payload)
                tags = [v.tag for v in ev.summary.value]
                if all(self._keep(tag, ev.step, epochs_done) for tag in tags):
                    keep.append(raw)
                    kept.update((tag, ev.step) for tag in tags)
            if len(keep) < len(records) or sum(map(len, keep)) < len(data):
                storage.write_bytes(path, b"".join(keep))
        return kept

    def log_step(self, step, values):
        for k, v in values.items():
            self._writer().add_scalar(f"step/{k}", float(v), step)

    def log_epoch(self, row, images=None, sync: bool = True):
        epoch, writer = int(row["epoch"]), self._writer()
        for k, v in numeric(row).items():
            writer.add_scalar(f"epoch/{k}", v, epoch)
        for name, img in (images or {}).items():
            writer.add_image(name, np.asarray(img), epoch, dataformats="HWC")
        if sync:
            self._sync()

    def _sync(self) -> None:
        if self.writer is None:
            return
        if not self.remote:
            self.writer.flush()
            return
        self.writer.close()  # the next event opens the next file
        self.writer = None
        for name in sorted(os.listdir(self.logdir)):
            local = os.path.join(self.logdir, name)
            with open(local, "rb") as fh:
                storage.write_bytes(storage.join(self.dest, name), fh.read())
            os.remove(local)

    def end(self, status="FINISHED"):
        self._sync()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.remote and self.logdir:
            shutil.rmtree(self.logdir, ignore_errors=True)


# ---------------------------------------------------------------- MLflow


def _mlflow_client(tracking_uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise RuntimeError(f"--tracker mlflow needs the mlflow package: {MLFLOW_INSTALL} ({e})") from None
    return MlflowClient(tracking_uri=tracking_uri)


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI; a one-line error when it is not set (the workers must log where the driver does)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise ValueError("--tracker mlflow logs to the MLflow server at MLFLOW_TRACKING_URI, which is not set "
                         "(e.g. export MLFLOW_TRACKING_URI=http://127.0.0.1:5000)")
    return uri


def mlflow_env() -> dict[str, str]:
    """The MLFLOW_* settings (URI, credentials, TLS) the workers need to reach the same server: a remote
    cluster's workers do not inherit the driver's environment."""
    return {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """``path`` as a local path: itself, or (a URI) a temporary copy of the file or folder."""
    if not storage.is_uri(path):
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="dae-artifact-")
    try:
        name = os.path.join(tmp, os.path.basename(path.rstrip("/")))
        if storage.is_dir(path):
            for f in storage.list_files(path, recursive=True):
                rel = f[len(path.rstrip("/")) + 1:]
                os.makedirs(os.path.dirname(os.path.join(name, rel)), exist_ok=True)
                with open(os.path.join(name, rel), "wb") as fh:
                    fh.write(storage.read_bytes(f))
        else:
            with open(name, "wb") as fh:
                fh.write(storage.read_bytes(path))
        yield name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class MlflowTracker(Tracker):
    """One MLflow run (``run_id``) on the server at ``uri``: per-epoch metrics at step = epoch, params,
    artifacts. :meth:`open` (the driver) creates the run, or continues the one its run dir names."""

    def __init__(self, run_id: str, uri: str, ends_run: bool = True):
        self.run_id, self.uri, self.ends_run = run_id, uri, ends_run  # ends_run False: rank 0's, not the driver's
        self.client = _mlflow_client(uri)

    @classmethod
    def open(cls, run_dir: str, experiment: str, run_name: str, uri: str | None = None) -> MlflowTracker:
        """The MLflow run of ``run_dir``: the one RUN_DIR/mlflow.json names (set RUNNING again), else a
        new one in ``experiment`` (created if missing), recorded there."""
        uri = uri or tracking_uri()
        client = _mlflow_client(uri)
        record = storage.join(run_dir, MLFLOW_RUN_FILE)
        if storage.exists(record):
            run_id = storage.read_json(record)["run_id"]
            try:
                client.get_run(run_id)
            except Exception as e:  # noqa: BLE001 - a run dir moved to another server (or the run deleted)
                log.warning("MLflow run %s of %s is not on %s (%s): starting a new MLflow run", run_id, run_dir,
                            storage.redact(uri), str(e).splitlines()[0])
            else:
                client.update_run(run_id, status="RUNNING")
                log.info("MLflow: continuing run %s (%s)", run_id, storage.redact(uri))
                return cls(run_id, uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            try:
                exp_id = client.create_experiment(experiment)
            except Exception:  # noqa: BLE001 - another run created it first
                exp_id = client.get_experiment_by_name(experiment).experiment_id
        run = client.create_run(exp_id, run_name=run_name, tags={"dae.run_dir": storage.redact(run_dir)})
        storage.write_json(record, {"run_id": run.info.run_id, "experiment_id": exp_id, "experiment": experiment,
                                    "tracking_uri": storage.redact(uri)})
        log.info("MLflow: run %s in experiment %r (%s)", run.info.run_id, experiment, storage.redact(uri))
        return cls(run.info.run_id, uri)

    def start(self, params=None, done=()):
        from mlflow.entities import Param

        if params:
            have = self.client.get_run(self.run_id).data.params
            new = [Param(k, str(v)[:PARAM_MAX]) for k, v in sorted(params.items()) if k not in have]
            for i in range(0, len(new), 100):  # log_batch takes at most 100 params
                self.client.log_batch(self.run_id, params=new[i:i + 100])
        if done:
            logged = {m.step for m in self.client.get_metric_history(self.run_id, "train_loss")}
            for row in done:
                if int(row["epoch"]) not in logged:
                    self.log_epoch(row)

    def log_epoch(self, row, images=None):
        from mlflow.entities import Metric

        now, epoch = int(time.time() * 1000), int(row["epoch"])
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in numeric(row).items()])

    def log_artifacts(self, paths):
        for name, path in paths.items():
            if not storage.exists(path):
                continue
            folder = os.path.dirname(name) or None
            with local_copy(path) as local:
                if os.path.isdir(local):
                    self.client.log_artifacts(self.run_id, local, artifact_path=name)
                elif os.path.basename(local) == os.path.basename(name):
                    self.client.log_artifact(self.run_id, local, artifact_path=folder)
                else:  # the artifact's own name
                    with tempfile.TemporaryDirectory(prefix="dae-artifact-") as tmp:
                        shutil.copy(local, os.path.join(tmp, os.path.basename(name)))
                        self.client.log_artifact(self.run_id, os.path.join(tmp, os.path.basename(name)),
                                                 artifact_path=folder)

    def end(self, status="FINISHED"):
        if self.ends_run:
            self.client.set_terminated(self.run_id, status)
