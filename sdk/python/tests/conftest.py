"""Fixtures: a real ``nook serve`` on a private socket (the built binary,
``$NOOK_BIN`` or ``nook`` on PATH; the guest kernel and agent as the other
end-to-end tests find them: ``NOOK_AGENT`` and ``nook setup``'s cache),
and sandboxes on it shared where a test needs no fresh one."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nook import Client, Sandbox


def nook_bin() -> str:
    found = os.environ.get("NOOK_BIN") or shutil.which("nook")
    if not found:
        pytest.skip("no nook binary: set NOOK_BIN or put nook on PATH (scripts/setup)")
    return found


def qemus_of(host_pid: int) -> list[str]:
    """QEMU processes of the session whose host process is ``host_pid``
    (their command lines name ``nook-<pid>-``)."""
    needle = f"nook-{host_pid}-"
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and needle in cmdline and pid_alive(int(entry.name)):
            found.append(f"{entry.name}: {cmdline}")
    return found


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(")", 1)[-1].strip().startswith("Z")


def wait_for(what: str, limit_s: float, check: object) -> None:
    deadline = time.monotonic() + limit_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


@pytest.fixture(scope="session")
def daemon_socket() -> Iterator[Path]:
    """A ``nook serve --engine qemu`` of the tests' own; ``NOOK_SOCKET``
    points at it so sandboxes made without ``client=`` find it."""
    binary = nook_bin()
    if not os.environ.get("NOOK_AGENT"):
        pytest.skip(
            "NOOK_AGENT is not set to a built agent (run scripts/test, or scripts/setup and export it)"
        )
    work = Path(tempfile.mkdtemp(prefix="nook-pysdk-"))
    sock = work / "run" / "nook.sock"
    log = open(work / "daemon.log", "wb")
    child = subprocess.Popen(
        [binary, "serve", "--engine", "qemu", "--socket", str(sock)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        wait_for("the daemon listens", 30, lambda: sock.exists() or child.poll() is not None)
        assert child.poll() is None, (work / "daemon.log").read_text()
        old = os.environ.get("NOOK_SOCKET")
        os.environ["NOOK_SOCKET"] = str(sock)
        yield sock
        if old is None:
            del os.environ["NOOK_SOCKET"]
        else:
            os.environ["NOOK_SOCKET"] = old
    finally:
        child.terminate()
        child.wait(90)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def client(daemon_socket: Path) -> Iterator[Client]:
    with Client(daemon_socket, autostart=False) as c:
        yield c


@pytest.fixture(scope="session")
def sandbox(client: Client) -> Iterator[Sandbox]:
    """One sandbox shared by the tests that need no fresh one."""
    with Sandbox.create(client=client, memory_mib=256) as sb:
        yield sb
