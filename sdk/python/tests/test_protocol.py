"""The protocol layer against a scripted fake daemon (no VM): replies
routed by id when they interleave, error codes mapped to exceptions, a
lost connection failing the callers that wait, the version check."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nook import AsyncClient, Client, ConnectionLost, GuestNotFound, NookError, VersionMismatch, errors
from nook import _protocol as proto

#: Answers a request; returns True to hang up.
Handler = Callable[[dict, Callable[[dict], None]], bool | None]


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Handler], Path]]:
    """Starts a fake daemon that answers handshakes and hands every other
    request to a handler (with a function that sends a reply)."""
    servers: list[socket.socket] = []

    def start(handler: Handler) -> Path:
        path = tmp_path / f"fake{len(servers)}.sock"
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(str(path))
        srv.listen()
        servers.append(srv)

        def serve() -> None:
            conn, _ = srv.accept()
            f = conn.makefile("rwb")
            lock = threading.Lock()

            def send(v: dict) -> None:
                with lock:
                    f.write(json.dumps(v).encode() + b"\n")
                    f.flush()

            try:
                for line in f:
                    req = json.loads(line)
                    if req["type"] == "handshake":
                        send(
                            {
                                "id": req["id"],
                                "type": "hello",
                                "version": 1,
                                "server": "nook",
                                "server_version": "9",
                            }
                        )
                    elif handler(req, send):
                        break
            finally:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
        return path

    yield start
    for s in servers:
        s.close()


def interleaving(req: dict, send: Callable[[dict], None]) -> None:
    """Execs: answered only once the second arrived, events interleaved."""
    pending = interleaving.pending  # type: ignore[attr-defined]
    pending.append(req)
    if len(pending) < 2:
        return
    # `x` fails, `y` exits: whichever was sent first.
    a, b = sorted(pending, key=lambda r: r["argv"])
    for r, word in ((a, b"a"), (b, b"b")):
        send({"id": r["id"], "type": "started", "pid": 1})
    for i in range(3):
        for r, word in ((b, b"b"), (a, b"a")):
            send({"id": r["id"], "type": "stdout", "data": b64(word * (i + 1))})
    send({"id": b["id"], "type": "exit", "code": 2, "signal": None, "timed_out": False})
    send({"id": a["id"], "type": "error", "code": "not_found", "message": "no such program"})


def test_interleaved_replies_reach_their_callers(fake: Callable[[Handler], Path]) -> None:
    interleaving.pending = []  # type: ignore[attr-defined]
    with Client(fake(interleaving), autostart=False) as c:
        assert c.server_version == "9"
        out: dict[str, object] = {}

        def first() -> None:
            try:
                c.run(proto.exec_attached("s", ["x"], {}))
            except NookError as e:
                out["a"] = e

        t = threading.Thread(target=first)
        t.start()
        r = c.run(proto.exec_attached("s", ["y"], {}))
        t.join(10)
        assert r.stdout == b"bbbbbb" and r.exit_code == 2
        assert isinstance(out["a"], GuestNotFound) and out["a"].message == "no such program"


def test_error_codes_map_to_exceptions() -> None:
    assert isinstance(errors.error_from_code("vm", "m"), errors.VmError)
    assert isinstance(errors.error_from_code("no_session", "m"), errors.SandboxNotFound)
    assert isinstance(errors.error_from_code("is_a_directory", "m"), errors.GuestFileError)
    e = errors.error_from_code("a_future_code", "m")
    assert type(e) is NookError and e.code == "a_future_code" and e.message == "m"


def test_lost_connection_fails_the_waiting_caller(fake: Callable[[Handler], Path]) -> None:
    def hang_up(req: dict, send: Callable[[dict], None]) -> bool:
        return True

    with Client(fake(hang_up), autostart=False) as c:
        with pytest.raises(ConnectionLost):
            c.run(proto.inspect("s"))
        with pytest.raises(ConnectionLost):
            c.run(proto.inspect("s"))


def test_version_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "old.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen()

    def serve() -> None:
        conn, _ = srv.accept()
        f = conn.makefile("rwb")
        req = json.loads(f.readline())
        msg = {"id": req["id"], "type": "error", "code": "version_mismatch", "message": "speaks 2"}
        f.write(json.dumps(msg).encode() + b"\n")
        f.flush()
        f.readline()

    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(VersionMismatch):
        Client(path, autostart=False)
    srv.close()


def test_async_client_routes_replies(fake: Callable[[Handler], Path]) -> None:
    interleaving.pending = []  # type: ignore[attr-defined]
    path = fake(interleaving)

    async def scenario() -> None:
        async with await AsyncClient.connect(path, autostart=False) as c:
            a = asyncio.ensure_future(c.run(proto.exec_attached("s", ["x"], {})))
            b = await c.run(proto.exec_attached("s", ["y"], {}))
            assert b.stdout == b"bbbbbb"
            with pytest.raises(GuestNotFound):
                await a

    asyncio.run(scenario())


def test_no_daemon_without_autostart(tmp_path: Path) -> None:
    with pytest.raises(errors.DaemonUnavailable):
        Client(tmp_path / "none.sock", autostart=False)
