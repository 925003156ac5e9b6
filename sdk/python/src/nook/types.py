"""Plain values the SDK returns: command results and events, file metadata,
sandbox state, snapshots, and the option sets of ``create`` and ``exec``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

#: A command: an argv list, or a shell string run with ``sh -c``.
Command = str | Sequence[str]

#: Bytes, or text (encoded as UTF-8).
Data = bytes | str


@dataclass(frozen=True)
class ExecResult:
    """How a command ended, with all its output.

    ``exit_code`` is ``None`` when a signal ended the command (``signal``
    says which); ``timed_out`` is true when its ``timeout`` killed it. For
    a background process, ``stdout`` holds its stdout and stderr as they
    interleaved and ``stderr`` is empty (the daemon keeps one log).
    """

    stdout: bytes
    stderr: bytes
    exit_code: int | None
    signal: int | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """Whether the command exited with code 0."""
        return self.exit_code == 0

    @property
    def stdout_text(self) -> str:
        """``stdout`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        """``stderr`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.stderr.decode("utf-8", "replace")


@dataclass(frozen=True)
class ExecEvent:
    """One event of a streamed command: output bytes (``kind`` ``"stdout"``
    or ``"stderr"``, in ``data``), and last ``"exit"`` with the ``result``
    (its ``stdout``/``stderr`` hold everything that was streamed)."""

    kind: Literal["stdout", "stderr", "exit"]
    data: bytes = b""
    result: ExecResult | None = None

    @property
    def text(self) -> str:
        """``data`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class FileInfo:
    """A guest file's metadata (``list`` and ``stat``)."""

    name: str
    kind: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    mtime: int
    link_target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    @staticmethod
    def from_wire(v: Mapping[str, Any]) -> FileInfo:
        kind = v.get("kind", "other")
        return FileInfo(
            name=str(v.get("name", "")),
            kind=kind if kind in ("file", "dir", "symlink") else "other",
            size=int(v.get("size", 0)),
            mode=int(v.get("mode", 0)),
            mtime=int(v.get("mtime", 0)),
            link_target=v.get("link_target"),
        )


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox's state as the daemon reports it (``nook ps`` has the same)."""

    name: str
    engine: str
    image: str | None
    memory_mib: int
    vcpus: int
    pid: int
    state: str
    created_unix: int
    exit_reason: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @staticmethod
    def from_wire(v: Mapping[str, Any]) -> SandboxInfo:
        return SandboxInfo(
            name=str(v["name"]),
            engine=str(v.get("engine", "")),
            image=v.get("image"),
            memory_mib=int(v.get("memory_mib", 0)),
            vcpus=int(v.get("vcpus", 0)),
            pid=int(v.get("pid", 0)),
            state=str(v.get("state", "")),
            created_unix=int(v.get("created_unix", 0)),
            exit_reason=v.get("exit_reason"),
            raw=dict(v),
        )


@dataclass(frozen=True)
class SnapshotInfo:
    """A named snapshot: restore it with ``Sandbox.from_snapshot(name)``."""

    name: str
    path: str


@dataclass(frozen=True)
class Share:
    """A host directory shown in the guest at ``guest_path`` (a ``shares``
    entry); for ``volumes``, ``source`` is a volume name (created when
    missing) or a disk image path."""

    source: str
    guest_path: str
    read_only: bool = False


class CreateOptions(TypedDict, total=False):
    """What ``Sandbox.create`` accepts (all optional).

    ``memory_mib``, ``cpus``; ``net``: NAT egress; ``env``:
    variables every command starts with; ``shares``/``volumes``:
    :class:`Share` values; ``timeout``: stop the sandbox after this many
    idle seconds; ``name``: default generated; ``keep``: the sandbox
    outlives this client (``Sandbox.connect(name)`` finds it; ``kill()``
    ends it); ``pool``: take a sandbox of this configuration that the
    daemon booted ahead (its warm pool; the daemon then boots the next one),
    released -- removed -- on close (``name`` is then ignored).
    """

    memory_mib: int | None
    cpus: int | None
    net: bool
    env: Mapping[str, str] | None
    shares: Sequence[Share] | None
    volumes: Sequence[Share] | None
    timeout: float | None
    name: str | None
    keep: bool
    pool: bool


#: Called with each chunk of a command's output as it arrives.
OutputCallback = Callable[[bytes], None]


class ExecOptions(TypedDict, total=False):
    """What ``exec`` accepts (all optional).

    ``timeout``: seconds, after which the command's whole process group is
    killed and the result says ``timed_out``; ``env``: extra variables;
    ``cwd``: the working directory; ``stdin``: bytes or text fed to the
    command, then closed (``True`` for a background process: keep stdin
    open for ``send_stdin``); ``user``: run as this guest user;
    ``on_stdout``/``on_stderr``: called with each chunk as it arrives (in
    the calling thread, or the event loop for ``AsyncSandbox``).
    """

    timeout: float | None
    env: Mapping[str, str] | None
    cwd: str | None
    stdin: Data | bool | None
    user: str | None
    on_stdout: OutputCallback | None
    on_stderr: OutputCallback | None
