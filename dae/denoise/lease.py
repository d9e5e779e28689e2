"""One writer at a time: a lease object in the output, held for the whole run.

    OUT/_lease.json   {"run_id", "host", "pid", "started_at", "heartbeat", "expires"}  (times: Unix s)

A second run into the same output fails at once, naming the holder. The holder renews the lease
every HEARTBEAT_S from a thread; a lease whose ``expires`` has passed (a run killed on another node)
is taken over, and so is one whose holder is a dead process on this same host (a killed local run
need not wait). The holder checks the lease before each commit and stops, with one line, if it lost
it (it was too slow to renew, and another run took over): it never writes a marker after that.

What it guarantees:
- Local disk (and shared POSIX mounts with atomic link/rename, e.g. NFSv4): exclusive. A new lease
  is created with ``os.link`` (fails when the name exists); an expired or dead one is first renamed
  away, and only one of two racing takers can rename the same file.
- S3: pyarrow's S3 filesystem (our only S3 client) sends no conditional headers, so the lease is
  written, then read back after READ_BACK_S; S3 is strongly read-after-write consistent, so a run
  that reads back someone else's lease has lost the race and stops. Two runs that both read "no
  lease" and write within the same few milliseconds can both start; the loser finds out at its
  next heartbeat and stops before its next commit. AWS S3 supports ``If-None-Match: *`` on
  PutObject (since 2024-08) and ``If-Match`` with an ETag (since 2024-11), which would make the
  create exclusive; SeaweedFS added both in 3.97 (seaweedfs#7154; concurrent PUTs were not
  enforced until seaweedfs#8800, fixed in 2026). Using them needs a client that can send them.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from .. import storage

NAME = "_lease.json"
TTL_S = 120.0  # a lease not renewed for this long is free to take
HEARTBEAT_S = 15.0
READ_BACK_S = 0.5


class LeaseHeld(RuntimeError):
    """Another run holds the output's lease."""


def path(out: str) -> str:
    return storage.join(out, NAME)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free(held: dict, now: float) -> bool:
    if held.get("expires", 0) < now:
        return True
    return held.get("host") == socket.gethostname() and not _pid_alive(int(held.get("pid", 0)))


def _describe(held: dict, now: float) -> str:
    return (f"run {held.get('run_id')} (host {held.get('host')}, pid {held.get('pid')}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(held.get('started_at', 0)))}, last heartbeat "
            f"{now - held.get('heartbeat', 0):.0f} s ago, expires in {held.get('expires', 0) - now:.0f} s)")


class Lease:
    """``with Lease(out): ...`` holds OUT's lease for the block (heartbeat thread included)."""

    def __init__(self, out: str, run_id: str | None = None):
        self.out, self.path = out, path(out)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.lost: str = ""
        self._renewed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._body = {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                      "started_at": time.time()}

    # ---- the record
    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({**self._body, "heartbeat": now, "expires": now + TTL_S}, indent=2).encode()

    def _read(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.path).decode())
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as e:
            if not storage.exists(self.path):
                return None
            if isinstance(e, ValueError):  # a torn or foreign file: treat as expired, and say so
                return {"run_id": "unreadable", "expires": 0}
            raise

    # ---- acquire
    def acquire(self) -> "Lease":
        storage.makedirs(self.out)
        now = time.time()
        held = self._read()
        if held is not None and held.get("run_id") != self.run_id and not _free(held, now):
            raise LeaseHeld(f"{storage.redact(self.out)} is being written by {_describe(held, now)}; run one "
                            f"writer at a time (if that run is dead, rerun after its lease expires)")
        fs, p = storage.resolve(self.path)
        if storage.is_uri(self.path):
            storage.write_bytes(self.path, self._record())
            time.sleep(READ_BACK_S)
            back = self._read()
            if not back or back.get("run_id") != self.run_id:
                raise LeaseHeld(f"{storage.redact(self.out)} is being written by "
                                f"{_describe(back or {}, time.time())}; run one writer at a time")
        else:
            self._create_local(p, held)
        self._renewed = time.time()
        self._thread = threading.Thread(target=self._beat, name="dae-lease", daemon=True)
        self._thread.start()
        return self

    def _create_local(self, p: str, held: dict | None) -> None:
        if held is not None:  # free to take: move it away first, so that one taker wins
            try:
                os.rename(p, f"{p}.taken-{self.run_id}")
                os.remove(f"{p}.taken-{self.run_id}")
            except FileNotFoundError:
                pass  # another taker moved it; the link below decides between us
        tmp = f"{p}.tmp-{self.run_id}"
        with open(tmp, "wb") as fh:
            fh.write(self._record())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, p)
        except FileExistsError:
            now = time.time()
            raise LeaseHeld(f"{storage.redact(self.out)} is being written by {_describe(self._read() or {}, now)}; "
                            f"run one writer at a time") from None
        finally:
            os.remove(tmp)

    # ---- hold
    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.renew()

    def renew(self) -> None:
        try:
            held = self._read()
            if not held or held.get("run_id") != self.run_id:
                self.lost = f"another run took the lease: {_describe(held or {}, time.time())}"
                return
            storage.write_bytes(self.path, self._record())
            self._renewed = time.time()
        except Exception as e:  # noqa: BLE001 - a failed renewal is retried; expiry is the real limit
            if time.time() > self._renewed + TTL_S:
                self.lost = f"the lease could not be renewed before it expired ({e})"

    def check(self) -> None:
        """Before each commit: stop if the lease is no longer ours."""
        if self.lost:
            raise LeaseHeld(f"{storage.redact(self.out)}: this run lost its lease and stopped before writing "
                            f"more ({self.lost})")

    # ---- release
    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = self._read()
            if held and held.get("run_id") == self.run_id:
                storage.delete(self.path)
        except Exception:  # noqa: BLE001 - an unreleased lease expires by itself
            pass

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
