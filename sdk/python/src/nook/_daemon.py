"""Finding the daemon's socket, and starting ``nook serve`` when no daemon
answers on it.

A daemon the SDK starts is shared: every SDK client on the machine that
uses the same socket connects to it. It runs with ``--idle-exit``, so it
stops by itself once no client has been connected for a few seconds (and
no sandbox created with ``keep=True`` runs); sandboxes a client created
without ``keep`` end with that client's connection.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from .errors import DaemonUnavailable

#: Seconds without clients after which a daemon the SDK started stops.
IDLE_EXIT_S = 5
#: How long to wait for a daemon the SDK started to listen.
START_TIMEOUT_S = 60.0


def nook_home() -> Path:
    """``$NOOK_HOME``, default ``~/.cache/nook`` (as nook itself)."""
    home = os.environ.get("NOOK_HOME")
    return Path(home) if home else Path.home() / ".cache" / "nook"


def default_socket() -> Path:
    """``$NOOK_SOCKET``, else ``$NOOK_HOME/serve.sock`` (as ``nook serve``)."""
    sock = os.environ.get("NOOK_SOCKET")
    return Path(sock) if sock else nook_home() / "serve.sock"


def nook_binary() -> str:
    """``$NOOK_BIN``, else ``nook`` on ``PATH``."""
    found = os.environ.get("NOOK_BIN") or shutil.which("nook")
    if not found:
        raise DaemonUnavailable(
            "daemon_unavailable",
            "no daemon runs and the `nook` binary is not on PATH: install nook "
            "(scripts/setup) or set NOOK_BIN",
        )
    return found


def _try_connect(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return s
    except OSError as e:
        s.close()
        if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
            return None
        raise DaemonUnavailable("daemon_unavailable", f"cannot connect to {path}: {e}") from None


def _start(path: Path) -> subprocess.Popen[bytes]:
    log_path = path.with_name(path.name + ".log")
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [nook_binary(), "serve", "--socket", str(path), "--idle-exit", str(IDLE_EXIT_S)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            # Its own session: a Ctrl-C meant for this program does not stop
            # a daemon other clients may share; it ends by --idle-exit.
            start_new_session=True,
            close_fds=True,
        )


def connect_socket(path: Path | None = None, autostart: bool = True) -> socket.socket:
    """A connected socket to the daemon at ``path`` (default
    :func:`default_socket`); with ``autostart``, starts ``nook serve`` there
    when no daemon answers. Blocking."""
    path = Path(path) if path is not None else default_socket()
    s = _try_connect(path)
    if s is not None:
        return s
    if not autostart:
        raise DaemonUnavailable(
            "daemon_unavailable", f"no nook daemon answers on {path} (start `nook serve`)"
        )
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # One starter at a time: clients starting together share one daemon.
    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        s = _try_connect(path)
        if s is not None:
            return s
        child = _start(path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            s = _try_connect(path)
            if s is not None:
                # Reaped when it stops while this process lives.
                threading.Thread(target=child.wait, name="nook-sdk-daemon", daemon=True).start()
                return s
            if child.poll() is not None:
                break
            time.sleep(0.02)
        if child.poll() is None:
            child.kill()
        child.wait()
    raise DaemonUnavailable(
        "daemon_unavailable",
        f"`nook serve --socket {path}` did not start (exit {child.returncode}); see {path}.log",
    )
