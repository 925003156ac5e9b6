"""Sandboxes: the context manager removes its VM even when the body raises,
connect, errors, snapshot and restore, and the daemon the SDK starts
itself when none runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import nook_bin, pid_alive, qemus_of, wait_for

from nook import Client, ImageUnavailable, Sandbox, SandboxNotFound


def test_context_manager_leaves_no_vm_when_the_body_raises(client: Client) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with Sandbox.create(client=client, memory_mib=256) as sb:
            name, host = sb.name, sb.info.pid
            assert sb.exec("echo up").stdout == b"up\n"
            assert qemus_of(host), "no QEMU runs for the sandbox"
            raise RuntimeError("boom")
    assert name not in [s.name for s in client.sandboxes()]
    assert not pid_alive(host), "the session's host process is left"
    assert qemus_of(host) == [], "a QEMU is left behind"


def test_keep_connect_and_kill(client: Client) -> None:
    name = f"pysdk-{os.getpid()}-keep"
    sb = Sandbox.create(client=client, name=name, keep=True, env={"WHO": "kept"})
    try:
        sb.close()  # a kept sandbox outlives its handle
        again = Sandbox.connect(name)
        assert again.exec("echo $WHO").stdout == b"kept\n"
        again.close()
        assert Sandbox.connect(name, client=client).refresh().state == "running"
    finally:
        Sandbox.connect(name, client=client).kill()
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(name, client=client)


def test_errors_carry_the_daemon_code(client: Client) -> None:
    with pytest.raises(ImageUnavailable) as e:
        Sandbox.create(client=client, image="no-such-image:never")
    assert e.value.code == "unavailable" and e.value.message
    with pytest.raises(SandboxNotFound):
        Sandbox.connect("no-such-sandbox", client=client)


def test_snapshot_and_restore(client: Client) -> None:
    snap = f"pysdk-{os.getpid()}-snap"
    try:
        with Sandbox.create(client=client, memory_mib=256) as sb:
            sb.write("/root/state.txt", "before the snapshot\n")
            sb.exec("echo 42 > /tmp/answer")
            info = sb.snapshot(snap)
            assert info.name == snap
            sb.write("/root/state.txt", "after the snapshot\n")
        with Sandbox.from_snapshot(snap, client=client) as restored:
            assert restored.read_text("/root/state.txt") == "before the snapshot\n"
            assert restored.exec("cat /tmp/answer").stdout == b"42\n"
            assert restored.info.memory_mib == 256
    finally:
        subprocess.run([nook_bin(), "snapshot", "rm", snap], check=False, capture_output=True)


def daemon_pids(sock: Path) -> list[int]:
    """``nook serve`` processes serving ``sock``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and str(sock).encode() in argv and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_autostarted_daemon_stops_after_the_last_client(
    daemon_socket: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "auto" / "serve.sock"
    monkeypatch.setenv("NOOK_SOCKET", str(sock))
    monkeypatch.setenv("NOOK_BIN", nook_bin())
    assert daemon_pids(sock) == []
    with Sandbox.create(memory_mib=256) as sb:
        pids = daemon_pids(sock)
        assert len(pids) == 1, "the SDK did not start one daemon"
        assert sb.exec("echo auto").stdout == b"auto\n"
        # A second client shares the daemon.
        with Client() as other:
            assert sb.name in [s.name for s in other.sandboxes()]
        assert daemon_pids(sock) == pids
        host = sb.info.pid
    # No client is left: the daemon stops after its --idle-exit time.
    wait_for("the auto-started daemon stops", 30, lambda: not daemon_pids(sock))
    assert not sock.exists()
    assert qemus_of(host) == []


def test_pooled_sandboxes_are_given_back(client: Client) -> None:
    with Sandbox.create(client=client, pool=True, memory_mib=256) as first:
        assert first.exec("echo pooled").stdout == b"pooled\n"
        host = first.info.pid
    assert not pid_alive(host), "a released pool sandbox's host process is left"
    assert qemus_of(host) == []
    # The daemon booted the next one ahead; this takes it.
    with Sandbox.create(client=client, pool=True, memory_mib=256) as second:
        assert second.name != first.name
        assert second.exec("echo again").stdout == b"again\n"
        host = second.info.pid
    assert not pid_alive(host)
