"""``Desktop``: a sandbox with an X display, driven with the computer-use
action vocabulary (``screenshot``, ``left_click``, ``type``, ``key``, ...)
over the daemon's ``desktop_create`` and ``desktop_action`` requests
(docs/daemon.md, "Desktops"). ``AsyncDesktop`` is the asyncio flavour."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self, Unpack

from . import _protocol as proto
from .aio import AsyncClient, AsyncSandbox
from .client import Client
from .sandbox import Sandbox
from .types import CreateOptions, SandboxInfo


@dataclass(frozen=True)
class Screenshot:
    """A PNG of the screen (or of a zoomed region) and its size."""

    png: bytes
    width: int
    height: int

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "wb") as f:
            f.write(self.png)


#: What an action gives back: an image (``screenshot``, ``zoom``), the
#: pointer (``cursor_position``), or ``None`` once it was carried out.
ActionResult = Screenshot | tuple[int, int] | None


def _create(
    sizes: list[tuple[tuple[int, int], tuple[int, int]]],
    options: CreateOptions,
    image: str | None,
    size: Sequence[int] | None,
    max_screenshot_size: Sequence[int] | None,
) -> proto.Op[SandboxInfo]:
    """``desktop_create``: the session's state; the display's and the
    screenshots' sizes go to ``sizes``."""
    reply = yield from proto.desktop_create(options, image, size, max_screenshot_size)
    sizes.append(
        (
            (int(reply["width"]), int(reply["height"])),
            (int(reply["screenshot_width"]), int(reply["screenshot_height"])),
        )
    )
    return SandboxInfo.from_wire(reply["session"])


def _result(reply: dict[str, Any]) -> ActionResult:
    if reply["type"] == "image":
        return Screenshot(reply["png"], int(reply["width"]), int(reply["height"]))
    if reply["type"] == "position":
        return (int(reply["x"]), int(reply["y"]))
    return None


class Desktop(Sandbox):
    """A sandbox whose guest runs an X display and a window manager.

    Everything a :class:`~nook.Sandbox` does works on it (``exec`` with
    ``DISPLAY`` set, files, ``close``/``kill`` to destroy it). Coordinates
    are in screenshot pixels: with ``max_screenshot_size`` the daemon
    scales screenshots down and maps coordinates back to the screen.
    """

    #: The display's size, ``(width, height)`` (``None`` when attached with
    #: :meth:`connect`).
    size: tuple[int, int] | None = None
    #: The size screenshots come in: the space of action coordinates.
    screenshot_size: tuple[int, int] | None = None

    @classmethod
    def create(  # type: ignore[override]
        cls,
        image: str | None = None,
        *,
        size: Sequence[int] | None = None,
        max_screenshot_size: Sequence[int] | None = None,
        client: Client | None = None,
        **options: Unpack[CreateOptions],
    ) -> Self:
        """Boots a desktop of ``size`` ``(width, height)`` (default 1280x800)
        and returns once its display runs. ``image``: default nook's desktop
        image (built by the daemon on first use, minutes once); ``memory_mib``
        defaults to 1024. Other options as :meth:`Sandbox.create` (not
        ``pool``)."""
        sizes: list[tuple[tuple[int, int], tuple[int, int]]] = []
        op = _create(sizes, options, image, size, max_screenshot_size)
        desktop = cls._open(client, op, owned=not options.get("keep", False))
        desktop.size, desktop.screenshot_size = sizes[0]
        return desktop

    def action(self, action: str, **fields: Any) -> ActionResult:
        """Carries out one action with the computer-use tools' fields:
        ``coordinate=(x, y)``, ``start_coordinate``, ``text``,
        ``scroll_direction``, ``scroll_amount``, ``duration``, ``region``;
        and ``max_screenshot_size=(w, h)`` (kept for later actions) or
        ``settle_ms``. Returns a :class:`Screenshot` (``screenshot``,
        ``zoom``), ``(x, y)`` (``cursor_position``) or ``None``. A bad
        action raises :class:`~nook.ProtocolError` saying what to send."""
        return _result(self.client.run(proto.desktop_action(self.name, action, fields)))

    def screenshot(self, **fields: Any) -> Screenshot:
        """A screenshot (``max_screenshot_size``, ``settle_ms`` as for
        :meth:`action`)."""
        shot = self.action("screenshot", **fields)
        assert isinstance(shot, Screenshot), shot
        return shot


class AsyncDesktop(AsyncSandbox):
    """:class:`Desktop` for asyncio: the same methods, as coroutines."""

    size: tuple[int, int] | None = None
    screenshot_size: tuple[int, int] | None = None

    @classmethod
    async def create(  # type: ignore[override]
        cls,
        image: str | None = None,
        *,
        size: Sequence[int] | None = None,
        max_screenshot_size: Sequence[int] | None = None,
        client: AsyncClient | None = None,
        **options: Unpack[CreateOptions],
    ) -> Self:
        sizes: list[tuple[tuple[int, int], tuple[int, int]]] = []
        op = _create(sizes, options, image, size, max_screenshot_size)
        desktop = await cls._open(client, op, owned=not options.get("keep", False))
        desktop.size, desktop.screenshot_size = sizes[0]
        return desktop

    async def action(self, action: str, **fields: Any) -> ActionResult:
        return _result(await self.client.run(proto.desktop_action(self.name, action, fields)))

    async def screenshot(self, **fields: Any) -> Screenshot:
        shot = await self.action("screenshot", **fields)
        assert isinstance(shot, Screenshot), shot
        return shot
