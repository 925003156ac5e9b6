"""Desktops over the SDK (``nook.Desktop``): a real desktop session (nook's
desktop image, built once per machine; like the Rust desktop tests this
runs when NOOK_TEST_DEBIAN_IMAGE or NOOK_SLOW_TESTS is set and mmdebstrap
is installed): a scaled screenshot of a coloured root window, the pointer
round-tripping through the scaling, a bad action's error, and removal;
the same through ``AsyncDesktop``."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from conftest import pid_alive, qemus_of, wait_for

from nook import AsyncClient, AsyncDesktop, Client, Desktop, ProtocolError, Screenshot


def desktop_ready() -> None:
    if not (os.environ.get("NOOK_TEST_DEBIAN_IMAGE") or os.environ.get("NOOK_SLOW_TESTS")):
        pytest.skip("set NOOK_TEST_DEBIAN_IMAGE=1 to build the desktop image (a few minutes once)")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (apt-get install mmdebstrap)")


def rgb_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the RGB pixels of an 8-bit RGB PNG (what the
    guest agent writes), decoded with the standard library."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, width, height = 8, b"", 0, 0
    while at < len(png):
        (n,) = struct.unpack(">I", png[at : at + 4])
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + n]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", data[:10])
            assert (depth, colour) == (8, 2), "not 8-bit RGB"
        elif kind == b"IDAT":
            idat += data
        at += 12 + n
    raw, stride = zlib.decompress(idat), width * 3
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - 3] if i >= 3 else 0
            b, c = prev[i], prev[i - 3] if i >= 3 else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            paeth = a if pa <= pb and pa <= pc else b if pb <= pc else c
            line[i] = (line[i] + [0, a, b, (a + b) // 2, paeth][kind]) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [r[i : i + 3] for r in rows for i in range(0, stride, 3)]


def test_desktop_screenshots_pointer_errors_and_removal(client: Client) -> None:
    desktop_ready()
    with Desktop.create(client=client, size=(1024, 640), max_screenshot_size=(256, 256)) as desk:
        name, host = desk.name, desk.info.pid
        assert (desk.size, desk.screenshot_size) == ((1024, 640), (256, 160))
        assert desk.exec(["xsetroot", "-solid", "#0000ff"]).exit_code == 0

        shot = desk.screenshot()
        assert isinstance(shot, Screenshot)
        assert (shot.width, shot.height) == (256, 160)
        width, height, pixels = rgb_pixels(shot.png)
        assert (width, height) == (256, 160)
        not_blue = sum(1 for p in pixels if p != b"\x00\x00\xff")
        assert not_blue == 0, f"{not_blue} pixels are not blue"

        # Coordinates are in screenshot pixels, kept across requests.
        assert desk.action("mouse_move", coordinate=(60, 30)) is None
        assert desk.action("cursor_position") == (60, 30)
        # At full size the same pointer is four times as far.
        x, y = desk.action("cursor_position", max_screenshot_size=(1024, 640))  # type: ignore[misc]
        assert 240 <= x < 244 and 120 <= y < 124, (x, y)

        with pytest.raises(ProtocolError, match="missing field `text`; send `text`: the text to type"):
            desk.action("type")
    assert name not in [s.name for s in client.sandboxes()]
    wait_for("the desktop's host process is gone", 30, lambda: not pid_alive(host))
    assert qemus_of(host) == [], "a QEMU is left behind"


def test_async_desktop_takes_the_same_actions(daemon_socket: Path) -> None:
    desktop_ready()

    async def scenario() -> tuple[str, int]:
        async with await AsyncClient.connect(daemon_socket, autostart=False) as client:
            async with await AsyncDesktop.create(client=client, size=(640, 480)) as desk:
                assert (desk.size, desk.screenshot_size) == ((640, 480), (640, 480))
                shot = await desk.screenshot()
                assert (shot.width, shot.height) == (640, 480)
                assert rgb_pixels(shot.png)[:2] == (640, 480)
                assert await desk.action("mouse_move", coordinate=(33, 44)) is None
                assert await desk.action("cursor_position") == (33, 44)
                return desk.name, desk.info.pid

    name, host = asyncio.run(scenario())
    wait_for("the desktop's host process is gone", 30, lambda: not pid_alive(host))
    assert qemus_of(host) == [], f"a QEMU of {name} is left behind"
