"""The blocking connection to the daemon: one Unix socket, requests
multiplexed by id, a reader thread routing replies to the waiting callers.
Thread-safe: several threads may run requests on one client at once."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from . import _protocol as proto
from ._daemon import connect_socket
from .errors import NookError
from .types import ExecEvent, SandboxInfo

T = TypeVar("T")


class Client:
    """A connection to ``nook serve``.

    ``socket_path`` defaults to ``$NOOK_SOCKET``, else
    ``$NOOK_HOME/serve.sock``; with ``autostart`` (the default) a daemon is
    started there when none answers. Sandboxes created through a client
    without ``keep`` end when it closes (or when this process exits).
    """

    def __init__(
        self,
        socket_path: str | Path | None = None,
        *,
        autostart: bool = True,
        client_name: str = "nook-python",
    ) -> None:
        self._sock = connect_socket(Path(socket_path) if socket_path else None, autostart)
        self._rfile = self._sock.makefile("rb")
        self._write_lock = threading.Lock()
        self._router: proto.Router[queue.SimpleQueue[proto.Item]] = proto.Router()
        self._reader = threading.Thread(target=self._read_loop, name="nook-sdk-reader", daemon=True)
        self._reader.start()
        try:
            hello = self.run(proto.handshake(client_name))
        except BaseException:
            self.close()
            raise
        #: The daemon's version (``nook --version``).
        self.server_version: str = str(hello.get("server_version", ""))

    def _read_loop(self) -> None:
        why = "end of stream"
        try:
            while True:
                line = self._rfile.readline(proto.MAX_LINE + 1)
                if not line:
                    break
                self._router.deliver(line, queue.SimpleQueue.put)
        except (OSError, ValueError) as e:
            why = str(e)
        self._router.close(why, queue.SimpleQueue.put)

    def _perform(self, step: proto.Step) -> Any:
        if isinstance(step, proto.Send):
            channel: queue.SimpleQueue[proto.Item] = queue.SimpleQueue()
            rid, line = self._router.open(step.body, channel)
            with self._write_lock:
                try:
                    self._sock.sendall(line)
                except OSError as e:
                    raise proto.lost(str(e)) from None
            return rid
        if isinstance(step, proto.Recv):
            return self._router.taken(step.rid, self._router.channel(step.rid).get())
        return None

    def _drive(self, d: proto.Driver[T], emit: bool) -> Generator[ExecEvent, None, None]:
        try:
            while (step := d.next_step()) is not None:
                if isinstance(step, proto.Emit):
                    if emit:
                        yield step.event
                    continue
                try:
                    d.resume(self._perform(step))
                except NookError as e:
                    d.resume(error=e)
        finally:
            # The caller left early (broke out of a stream, Ctrl-C): let
            # the op tidy up, e.g. kill its command.
            if d.cancel():
                with contextlib.suppress(proto.Cancelled, NookError):
                    for _ in self._drive(d, emit=False):
                        pass

    def run(self, op: proto.Op[T]) -> T:
        """Carries an operation out; returns its result."""
        d = proto.Driver(op)
        for _ in self._drive(d, emit=False):
            pass
        return d.result  # type: ignore[return-value]

    def stream(self, op: proto.Op[Any]) -> Iterator[ExecEvent]:
        """Carries an operation out, yielding its events as they come."""
        yield from self._drive(proto.Driver(op), emit=True)

    def sandboxes(self) -> list[SandboxInfo]:
        """Every session nook knows (as ``nook ps -a``)."""
        return self.run(proto.list_sessions())

    def close(self) -> None:
        """Closes the connection: sandboxes it created without ``keep``
        are stopped and removed by the daemon."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._rfile.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
