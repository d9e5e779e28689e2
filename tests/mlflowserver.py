"""A real MLflow tracking server for the tests (the ``mlflow`` package of the test extra): started on
127.0.0.1 at a free port with a SQLite backend store and a local artifact store (served through the
server, as a remote one would be), stopped at the end.

    with MlflowServer.start(tmp_dir) as srv:   # or srv = MlflowServer.start(...); ...; srv.stop()
        client = MlflowClient(srv.uri)

A test module holds one in a module- or session-scoped fixture (the server takes a few seconds to
start); :func:`mlflow_server_fixture` makes one that skips when the package is missing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

# MLflow 3 sends usage telemetry unless told not to; nothing here may reach out (nor wait on a network)
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
START_TIMEOUT_S = 120.0  # on 2 busy cores the first start (database migrations) took ~15 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, proc: subprocess.Popen, uri: str, log_path: str):
        self.proc, self.uri, self.log_path = proc, uri, log_path

    @classmethod
    def start(cls, work_dir: str) -> MlflowServer:
        exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
        if not os.path.exists(exe):
            raise FileNotFoundError(f"no mlflow command next to {sys.executable}: pip install 'dae[test]'")
        port = _free_port()
        log_path = os.path.join(work_dir, "mlflow-server.log")
        cmd = [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{os.path.join(work_dir, 'mlflow.db')}",
               "--artifacts-destination", os.path.join(work_dir, "artifacts")]
        with open(log_path, "wb") as log:
            # its own session: stop() ends the server and the workers it forks, nothing else
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, **QUIET})
        srv = cls(proc, f"http://127.0.0.1:{port}", log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{srv.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return srv
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                srv.stop()
                raise RuntimeError(f"the MLflow server did not start: {srv.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, n: int = 3000) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read()[-n:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(20)

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def mlflow_server_fixture(scope: str = "module"):
    """A pytest fixture of that scope: a started server (skips where mlflow is not installed)."""

    @pytest.fixture(scope=scope)
    def mlflow_server(tmp_path_factory):
        pytest.importorskip("mlflow", reason="mlflow is not installed: pip install 'dae[test]'")
        with MlflowServer.start(str(tmp_path_factory.mktemp("mlflow"))) as srv:
            yield srv

    return mlflow_server
