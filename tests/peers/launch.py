"""Start and stop real peer processes (Node/Java/Python servers) for integration tests.

Reusable by every peer: ``start_peer`` runs a command in its own session (so its process group is
ours alone), sends its stdout and stderr to a log file, and polls a ready URL. ``PeerProcess.stop``
signals only that process group: never anything found by name.

    port = free_port()
    peer = start_peer("medplum", ["node", "server.js", str(port)], port=port,
                      ready_url=f"http://127.0.0.1:{port}/$health", log_dir=tmp_dir)
    ...
    peer.stop()

Any peer still running when the interpreter exits is stopped by an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

__all__ = ["PeerProcess", "free_port", "start_peer"]

_running: set[PeerProcess] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _exited(pid: int) -> bool:
    """Whether our child has exited, WITHOUT reaping it.

    While the child is unreaped (alive or a zombie) its PID, which is also the ID of the process
    group it leads, cannot be reused, so signalling that group only reaches processes we started.
    """
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped
        return True
    return info is not None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@dataclass(eq=False)
class PeerProcess:
    """A peer started by ``start_peer``. ``base_url`` is the URL tests talk to."""

    name: str
    pid: int
    base_url: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    ready_seconds: float = 0.0  # from Popen to the first answer of ready_url
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.popen.returncode is None and not _exited(self.pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with self.log_path.open("r", encoding="utf-8", errors="replace") as fh:
                return "".join(deque(fh, maxlen=lines))
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM our process group, SIGKILL it after ``timeout`` s, reap; return the exit code."""
        try:
            if self.popen.returncode is None:
                # The leader is unreaped here, so the group ID is still ours (see _exited).
                if not _exited(self.pid):
                    _signal_group(self.pid, signal.SIGTERM)
                    deadline = time.monotonic() + timeout
                    while not _exited(self.pid) and time.monotonic() < deadline:
                        time.sleep(0.02)
                # Leader gone or too slow: kill whatever is left of our group, then reap.
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait()
            return self.popen.returncode
        finally:
            if self._log_file is not None and not self._log_file.closed:
                self._log_file.close()
            with _lock:
                _running.discard(self)


def start_peer(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    ready_url: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    log_dir: str | os.PathLike[str],
    base_url: str | None = None,
) -> PeerProcess:
    """Start ``argv`` and wait until ``ready_url`` answers with a status below 500.

    ``env`` is added to the current environment. stdout and stderr go to
    ``<log_dir>/<name>-<port>.log``. Raises RuntimeError (with the last 40 log lines) if the
    process exits first or ``timeout`` seconds pass; the process is stopped in both cases.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    log_file = log_path.open("ab")
    full_env = {**os.environ, **(env or {})}
    started = time.monotonic()
    try:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        log_file.close()
        raise
    peer = PeerProcess(
        name=name,
        pid=popen.pid,
        base_url=base_url or f"http://127.0.0.1:{port}",
        popen=popen,
        log_path=log_path,
        port=port,
        _log_file=log_file,
    )
    with _lock:
        _running.add(peer)

    deadline = started + timeout
    try:
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                if _exited(peer.pid):
                    code = peer.stop()
                    raise RuntimeError(
                        f"peer {name!r} exited with code {code} before {ready_url} answered "
                        f"(command: {' '.join(argv)}); last log lines from {log_path}:\n"
                        f"{peer.log_tail(40)}"
                    )
                try:
                    if client.get(ready_url).status_code < 500:
                        peer.ready_seconds = time.monotonic() - started
                        return peer
                except httpx.TransportError:
                    pass
                if time.monotonic() >= deadline:
                    peer.stop()
                    raise RuntimeError(
                        f"peer {name!r} did not answer {ready_url} within {timeout:.0f} s "
                        f"(command: {' '.join(argv)}); last log lines from {log_path}:\n"
                        f"{peer.log_tail(40)}"
                    )
                time.sleep(0.05)
    except BaseException:
        peer.stop()
        raise


@atexit.register
def _stop_all() -> None:
    with _lock:
        peers = list(_running)
    for peer in peers:
        with contextlib.suppress(Exception):
            peer.stop(timeout=5.0)
