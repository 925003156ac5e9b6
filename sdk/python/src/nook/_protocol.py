"""nook's daemon protocol without I/O (docs/daemon.md; the Rust side is
crates/serve/src/daemon/proto.rs).

Every operation is a generator ("op") that yields steps -- :class:`Send` a
request, :class:`Recv` the next reply to one, :class:`Emit` an event to a
streaming caller -- and returns its result. The blocking client
(``nook.client``) and the asyncio one (``nook.aio``) only carry the steps
out, so what a request looks like and how its replies are read is written
once, here.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import tempfile
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

from .errors import ConnectionLost, NookError, ProtocolError, error_from_code
from .types import (
    Command,
    CreateOptions,
    Data,
    ExecEvent,
    ExecOptions,
    ExecResult,
    FileInfo,
    OutputCallback,
    SandboxInfo,
    Share,
    SnapshotInfo,
)

#: The protocol version this SDK speaks.
PROTOCOL_VERSION = 1
#: Longest line either side sends (16 MiB).
MAX_LINE = 16 * 1024 * 1024
#: Largest decoded chunk of file data or stdin per line (4 MiB).
MAX_CHUNK = 4 * 1024 * 1024
#: Most output bytes one ``proc_read`` returns.
MAX_PROC_READ = 512 * 1024
#: What ``read`` asks for when the caller sets no cap: the whole file.
WHOLE_FILE = 1 << 62

SIGKILL = 9

Reply = dict[str, Any]
T = TypeVar("T")
C = TypeVar("C")


@dataclass(frozen=True)
class Send:
    """Send request ``body`` (``id`` added by the connection); the step's
    value is the request's id."""

    body: dict[str, Any]


@dataclass(frozen=True)
class Recv:
    """The next reply or event to request ``rid``."""

    rid: int


@dataclass(frozen=True)
class Emit:
    """An event for a caller iterating over a command's output."""

    event: ExecEvent


Step = Send | Recv | Emit
Op = Generator[Step, Any, T]


class Cancelled(Exception):
    """Thrown into an op whose caller stopped listening (it broke out of a
    stream, or was interrupted), so that it can tidy up."""


class Driver(Generic[T]):
    """Steps an op along: a connection asks it for the next step, carries
    it out, and resumes it with the value or the error."""

    def __init__(self, op: Op[T]) -> None:
        self._op = op
        self._value: Any = None
        self._error: BaseException | None = None
        self.result: T | None = None
        #: The op returned or raised.
        self.done = False

    def next_step(self) -> Step | None:
        """The next step, or ``None`` once the op returned (``result``)."""
        try:
            if self._error is not None:
                error, self._error = self._error, None
                return self._op.throw(error)
            value, self._value = self._value, None
            return self._op.send(value)
        except StopIteration as done:
            self.done = True
            self.result = done.value
            return None
        except BaseException:
            self.done = True
            raise

    def resume(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error

    def cancel(self) -> bool:
        """Makes the op's next step raise :class:`Cancelled` in it; false
        when it has ended already. The caller then carries out the steps
        it takes to tidy up (an attached command is killed)."""
        if self.done:
            return False
        self.resume(error=Cancelled())
        return True


def is_final(body: Mapping[str, Any], reply: Mapping[str, Any]) -> bool:
    """Whether ``reply`` is the last line answering request ``body``."""
    kind = reply.get("type")
    if kind == "error":
        return True
    request = body.get("type")
    if request == "exec":
        return kind == "exit" or (kind == "started" and bool(body.get("detach")))
    if request == "file_read":
        return kind == "read_done"
    return True


#: What a reply channel carries: a reply and whether it is the request's
#: last, or the error that ended the connection.
Item = tuple[Reply, bool] | NookError


class Router(Generic[C]):
    """Request ids and the channels their replies go to, shared by a
    connection's callers and its reader. ``C`` is the connection's channel
    type (a thread-safe queue, or an asyncio one) of :data:`Item`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # Requests whose last reply has not arrived.
        self._pending: dict[int, tuple[Mapping[str, Any], C]] = {}
        # Channels whose last item has not been taken.
        self._channels: dict[int, C] = {}
        self.lost: NookError | None = None

    def open(self, body: Mapping[str, Any], channel: C) -> tuple[int, bytes]:
        """Registers a request; returns its id and its line."""
        with self._lock:
            if self.lost is not None:
                raise self.lost
            rid = next(self._ids)
            self._pending[rid] = (body, channel)
            self._channels[rid] = channel
        return rid, encode_line({"id": rid, **body})

    def channel(self, rid: int) -> C:
        with self._lock:
            return self._channels[rid]

    def taken(self, rid: int, item: Item) -> Reply:
        """A caller took ``item`` from request ``rid``'s channel: forgets
        the channel after its last item; returns the reply or raises."""
        if isinstance(item, NookError) or item[1]:
            with self._lock:
                self._channels.pop(rid, None)
        if isinstance(item, NookError):
            raise item
        return item[0]

    def route(self, line: bytes) -> tuple[C, Item] | None:
        """Where a reply line goes (``None``: no request of ours, e.g. the
        daemon's answer to a line it could not read)."""
        try:
            reply = decode_line(line)
        except ValueError:
            return None
        rid = reply.get("id")
        with self._lock:
            entry = self._pending.get(rid) if isinstance(rid, int) else None
            if entry is None or not isinstance(rid, int):
                return None
            body, channel = entry
            final = is_final(body, reply)
            if final:
                del self._pending[rid]
        return channel, (reply, final)

    def deliver(self, line: bytes, put: Callable[[C, Item], None]) -> None:
        """Puts a reply line in its request's channel (the reader's job)."""
        routed = self.route(line)
        if routed is not None:
            put(*routed)

    def close(self, why: str, put: Callable[[C, Item], None]) -> None:
        """Marks the connection lost and fails every request still waiting."""
        error = lost(why)
        with self._lock:
            if self.lost is None:
                self.lost = error
            channels = [c for _, c in self._pending.values()]
            self._pending.clear()
        for channel in channels:
            put(channel, error)


def encode_line(v: Mapping[str, Any]) -> bytes:
    return json.dumps(v, separators=(",", ":")).encode() + b"\n"


def decode_line(line: bytes) -> Reply:
    v = json.loads(line)
    if not isinstance(v, dict):
        raise ValueError("a reply line is not an object")
    return v


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(reply: Mapping[str, Any]) -> bytes:
    try:
        return base64.b64decode(reply.get("data") or "", validate=True)
    except ValueError as e:
        raise ProtocolError("bad_reply", f"reply data is not base64: {e}") from None


def as_bytes(data: Data) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def chunks(data: bytes) -> Iterable[bytes]:
    """``data`` in pieces of at most :data:`MAX_CHUNK` (one empty piece for
    empty data)."""
    if not data:
        yield b""
    for at in range(0, len(data), MAX_CHUNK):
        yield data[at : at + MAX_CHUNK]


def argv_of(cmd: Command) -> list[str]:
    """A shell string runs as ``sh -c``; a sequence is the argv."""
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    argv = [str(a) for a in cmd]
    if not argv:
        raise ValueError("an empty command")
    return argv


def check(reply: Reply, *kinds: str) -> Reply:
    """Raises the error a reply carries, or one for an unexpected type."""
    kind = reply.get("type")
    if kind == "error":
        raise error_from_code(str(reply.get("code", "other")), str(reply.get("message", "")))
    if kinds and kind not in kinds:
        raise ProtocolError("bad_reply", f"expected {' or '.join(kinds)}, got {kind!r}")
    return reply


def call(body: dict[str, Any], *kinds: str) -> Op[Reply]:
    """One request, one reply."""
    rid = yield Send(body)
    reply = yield Recv(rid)
    return check(reply, *kinds)


# -- sessions ---------------------------------------------------------------


def handshake(client: str) -> Op[Reply]:
    return (yield from call({"type": "handshake", "version": PROTOCOL_VERSION, "client": client}, "hello"))


def _mounts(values: Sequence[Share] | None) -> list[dict[str, Any]]:
    return [
        {"source": str(m.source), "guest_path": m.guest_path, "read_only": m.read_only} for m in values or ()
    ]


def create_body(
    options: CreateOptions, image: str | None = None, snapshot: str | None = None
) -> dict[str, Any]:
    unknown = set(options) - set(CreateOptions.__annotations__)
    if unknown:
        raise TypeError(f"unknown sandbox options: {', '.join(sorted(unknown))}")
    timeout = options.get("timeout")
    return {
        "type": "session_create",
        "name": options.get("name"),
        "image": image,
        "memory_mib": options.get("memory_mib"),
        "cpus": options.get("cpus"),
        "env": [[k, v] for k, v in (options.get("env") or {}).items()],
        "shares": _mounts(options.get("shares")),
        "volumes": _mounts(options.get("volumes")),
        "net": bool(options.get("net", False)),
        "idle_timeout_s": None if timeout is None else max(1, int(timeout)),
        "keep": bool(options.get("keep", False)),
        "snapshot": snapshot,
    }


def create(options: CreateOptions, image: str | None = None, snapshot: str | None = None) -> Op[SandboxInfo]:
    """Boots a session, or takes one from the daemon's warm pool (``pool``)."""
    body = create_body(options, image, snapshot)
    if options.get("pool", False):
        body = {"type": "pool_acquire", "spec": {k: v for k, v in body.items() if k != "type"}}
    reply = yield from call(body, "session")
    return SandboxInfo.from_wire(reply["session"])


def inspect(session: str) -> Op[SandboxInfo]:
    reply = yield from call({"type": "session_inspect", "session": session}, "session")
    return SandboxInfo.from_wire(reply["session"])


def list_sessions() -> Op[list[SandboxInfo]]:
    reply = yield from call({"type": "session_list"}, "sessions")
    return [SandboxInfo.from_wire(s) for s in reply.get("sessions", [])]


def remove(session: str, pooled: bool = False) -> Op[None]:
    """Stops (if running) and removes a session (gives a pooled one back,
    which removes it too)."""
    if pooled:
        yield from call({"type": "pool_release", "session": session}, "ok")
    else:
        yield from call({"type": "session_remove", "session": session, "force": True}, "ok")


def snapshot(session: str, name: str) -> Op[SnapshotInfo]:
    reply = yield from call({"type": "snapshot", "session": session, "name": name}, "snapshot")
    return SnapshotInfo(name=str(reply["name"]), path=str(reply["path"]))


# -- commands ---------------------------------------------------------------


def exec_body(session: str, cmd: Command, options: ExecOptions, detach: bool) -> dict[str, Any]:
    unknown = set(options) - set(ExecOptions.__annotations__)
    if unknown:
        raise TypeError(f"unknown exec options: {', '.join(sorted(unknown))}")
    timeout = options.get("timeout")
    stdin = options.get("stdin")
    return {
        "type": "exec",
        "session": session,
        "argv": argv_of(cmd),
        "env": [[k, v] for k, v in (options.get("env") or {}).items()],
        "cwd": options.get("cwd"),
        "user": options.get("user"),
        "tty": None,
        "stdin": stdin is not None and stdin is not False,
        "detach": detach,
        "timeout_ms": None if timeout is None else max(1, int(timeout * 1000)),
    }


def exit_result(reply: Reply, stdout: bytes = b"", stderr: bytes = b"") -> ExecResult:
    return ExecResult(
        stdout=stdout,
        stderr=stderr,
        exit_code=reply.get("code"),
        signal=reply.get("signal"),
        timed_out=bool(reply.get("timed_out", False)),
    )


def _feed_stdin(rid: int, stdin: Data | bool | None) -> Op[None]:
    """Sends an attached command its stdin, then closes it. A command that
    ended before reading it all is not an error."""
    try:
        if stdin is not None and not isinstance(stdin, bool):
            for piece in chunks(as_bytes(stdin)):
                if piece:
                    yield from call({"type": "exec_stdin", "exec": rid, "data": b64(piece)}, "ok")
        yield from call({"type": "exec_stdin_close", "exec": rid}, "ok")
    except NookError:
        pass


def exec_attached(session: str, cmd: Command, options: ExecOptions, collect: bool = True) -> Op[ExecResult]:
    """Runs a command to its end: its output goes to the callbacks and to
    :class:`Emit` steps as it arrives, and (with ``collect``) into the result."""
    body = exec_body(session, cmd, options, detach=False)
    on: dict[str, OutputCallback | None] = {
        "stdout": options.get("on_stdout"),
        "stderr": options.get("on_stderr"),
    }
    out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    rid = yield Send(body)
    try:
        while True:
            reply = check((yield Recv(rid)), "started", "stdout", "stderr", "exit")
            kind = reply["type"]
            if kind == "exit":
                break
            if kind == "started":
                if body["stdin"]:
                    yield from _feed_stdin(rid, options.get("stdin"))
                continue
            data = unb64(reply)
            if collect:
                out[kind].append(data)
            callback = on[kind]
            if callback is not None:
                callback(data)
            yield Emit(ExecEvent(kind=kind, data=data))
    except Cancelled:
        yield from _abandon(rid)
        raise
    result = exit_result(reply, b"".join(out["stdout"]), b"".join(out["stderr"]))
    yield Emit(ExecEvent(kind="exit", result=result))
    return result


def _abandon(rid: int) -> Op[None]:
    """Kills an attached command nobody listens to any more, and reads its
    events to the end."""
    try:
        yield from call({"type": "exec_signal", "exec": rid, "signal": SIGKILL}, "ok")
    except NookError:
        return  # it has ended
    while (yield Recv(rid)).get("type") not in ("exit", "error"):
        pass


def exec_background(session: str, cmd: Command, options: ExecOptions) -> Op[int]:
    """Starts a background process; returns its guest pid."""
    for callback in ("on_stdout", "on_stderr"):
        if options.get(callback) is not None:
            raise TypeError(f"{callback} needs an attached command (background=False)")
    body = exec_body(session, cmd, options, detach=True)
    reply = yield from call(body, "started")
    pid = int(reply["pid"])
    stdin = options.get("stdin")
    if stdin is not None and not isinstance(stdin, bool):
        yield from proc_stdin(session, pid, as_bytes(stdin), close=True)
    return pid


def proc_read(
    session: str, pid: int, offset: int, max_bytes: int = MAX_PROC_READ
) -> Op[tuple[bytes, int, bool, Reply | None]]:
    """Output of a background process from ``offset``: the bytes, the next
    offset, whether more is there, and its exit once it ended."""
    reply = yield from call(
        {"type": "proc_read", "session": session, "pid": pid, "offset": offset, "max_bytes": max_bytes},
        "proc_output",
    )
    return unb64(reply), int(reply["next_offset"]), bool(reply["truncated"]), reply.get("exit")


def proc_output(session: str, pid: int, offset: int = 0) -> Op[tuple[bytes, int, Reply | None]]:
    """All the output from ``offset`` on (read until none is left)."""
    parts: list[bytes] = []
    while True:
        data, offset, more, exit = yield from proc_read(session, pid, offset)
        parts.append(data)
        if not more:
            return b"".join(parts), offset, exit


def proc_wait(session: str, pid: int) -> Op[ExecResult]:
    """Waits for a background process; the result holds all its output."""
    reply = yield from call({"type": "proc_wait", "session": session, "pid": pid}, "exit")
    output, _, _ = yield from proc_output(session, pid)
    return exit_result(reply, output)


def proc_poll(session: str, pid: int) -> Op[ExecResult | None]:
    """How a background process ended (its output left out), or ``None``
    while it runs."""
    _, _, _, exit = yield from proc_read(session, pid, 0, max_bytes=0)
    return None if exit is None else exit_result(exit)


def proc_stdin(session: str, pid: int, data: bytes, close: bool) -> Op[None]:
    pieces = list(chunks(data))
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        yield from call(
            {
                "type": "proc_stdin",
                "session": session,
                "pid": pid,
                "data": b64(piece),
                "close": close and last,
            },
            "ok",
        )


def proc_signal(session: str, pid: int, signal: int) -> Op[None]:
    yield from call({"type": "proc_signal", "session": session, "pid": pid, "signal": signal}, "ok")


# -- files ------------------------------------------------------------------


def write(session: str, path: str, pieces: Iterable[bytes], mode: int) -> Op[None]:
    """Writes a guest file from chunks of at most :data:`MAX_CHUNK` bytes:
    the first in ``file_write``, the rest in ``file_write_chunk`` requests,
    each waiting for the daemon's ``ok`` (back-pressure). The file appears
    atomically once all arrived."""
    it = iter(pieces)
    first = next(it, b"")
    following = next(it, None)
    rid = yield Send(
        {
            "type": "file_write",
            "session": session,
            "path": path,
            "mode": mode,
            "data": b64(first),
            "more": following is not None,
        }
    )
    try:
        while following is not None:
            piece, following = following, next(it, None)
            yield from call(
                {
                    "type": "file_write_chunk",
                    "upload": rid,
                    "data": b64(piece),
                    "more": following is not None,
                },
                "ok",
            )
    except NookError as chunk_error:
        # The write itself failed: its own error says why.
        check((yield Recv(rid)), "ok")
        raise chunk_error
    check((yield Recv(rid)), "ok")


def file_pieces(local: str | os.PathLike[str]) -> Iterator[bytes]:
    """A host file in pieces of at most :data:`MAX_CHUNK` (at least one)."""
    with open(local, "rb") as f:
        piece = f.read(MAX_CHUNK)
        yield piece
        while piece:
            piece = f.read(MAX_CHUNK)
            if piece:
                yield piece


def upload_mode(local: str | os.PathLike[str], mode: int | None) -> int:
    """The mode an upload gives its guest file: ``mode``, else the host file's."""
    return mode if mode is not None else os.stat(local).st_mode & 0o777


@contextlib.contextmanager
def download_target(local: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A temporary file beside ``local`` that becomes ``local`` when the
    block succeeds and goes away when it fails."""
    target = Path(local)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read(
    session: str, path: str, sink: Callable[[bytes], object], max_bytes: int | None
) -> Op[tuple[int, int, bool]]:
    """Streams a guest file into ``sink``; returns its size, the bytes
    copied and whether ``max_bytes`` cut it short."""
    rid = yield Send(
        {
            "type": "file_read",
            "session": session,
            "path": path,
            "max_bytes": WHOLE_FILE if max_bytes is None else max_bytes,
        }
    )
    while True:
        reply = check((yield Recv(rid)), "file_data", "read_done")
        if reply["type"] == "file_data":
            sink(unb64(reply))
        else:
            return int(reply["size"]), int(reply["copied"]), bool(reply["truncated"])


def read_all(session: str, path: str, max_bytes: int | None) -> Op[bytes]:
    parts: list[bytes] = []
    yield from read(session, path, parts.append, max_bytes)
    return b"".join(parts)


def list_dir(session: str, path: str) -> Op[list[FileInfo]]:
    reply = yield from call({"type": "file_list", "session": session, "path": path}, "list")
    return [FileInfo.from_wire(e) for e in reply.get("entries", [])]


def stat(session: str, path: str) -> Op[FileInfo]:
    reply = yield from call({"type": "file_stat", "session": session, "path": path}, "stat")
    return FileInfo.from_wire(reply["stat"])


def mkdir(session: str, path: str, mode: int) -> Op[None]:
    yield from call({"type": "file_mkdir", "session": session, "path": path, "mode": mode}, "ok")


def remove_path(session: str, path: str, recursive: bool) -> Op[None]:
    yield from call({"type": "file_remove", "session": session, "path": path, "recursive": recursive}, "ok")


# -- desktops ---------------------------------------------------------------


def _pair(name: str, value: Sequence[int] | None) -> list[int] | None:
    if value is None:
        return None
    pair = [int(v) for v in value]
    if len(pair) != 2:
        raise ValueError(f"{name} is (width, height), not {value!r}")
    return pair


def desktop_create(
    options: CreateOptions,
    image: str | None,
    size: Sequence[int] | None,
    max_screenshot_size: Sequence[int] | None,
) -> Op[Reply]:
    """Boots a desktop session (``desktop_create``): its ``desktop`` reply."""
    if options.get("pool", False):
        raise TypeError("desktops do not come from the pool: leave out pool")
    body = create_body(options, image)
    del body["snapshot"]
    body.update(type="desktop_create", size=_pair("size", size))
    body["max_screenshot_size"] = _pair("max_screenshot_size", max_screenshot_size)
    return (yield from call(body, "desktop"))


def desktop_action(session: str, action: str, fields: Mapping[str, Any]) -> Op[Reply]:
    """One ``desktop_action``: its ``image``, ``position`` or ``done`` reply
    (an image's PNG decoded into ``png``)."""
    body: dict[str, Any] = {"type": "desktop_action", "session": session, "action": action}
    for key, value in fields.items():
        if value is not None:
            body[key] = list(value) if isinstance(value, tuple) else value
    reply = yield from call(body, "image", "position", "done")
    if reply["type"] == "image":
        reply = {**reply, "png": unb64(reply)}
    return reply


def lost(detail: str) -> ConnectionLost:
    return ConnectionLost("connection_lost", f"the daemon closed the connection: {detail}")
