"""Captures one frame from a VNC server with vncdotool and describes it.

usage: desktop_vnc.py HOST PORT PASSWORD OUT.png [REFERENCE.png]

Prints one JSON object: the frame's width and height, its most common
colour and the fraction of pixels that have it, and, given a reference
image of the same size, the fraction of pixels that differ from it by
more than 8 in any channel. Exits 2 when the server refuses the password
or the connection fails.
"""

import json
import sys
import warnings

warnings.filterwarnings("ignore")

from PIL import Image  # noqa: E402
from vncdotool import api  # noqa: E402


def main():
    host, port, password, out = sys.argv[1:5]
    reference = sys.argv[5] if len(sys.argv) > 5 else None
    try:
        client = api.connect(f"{host}::{port}", password=password, timeout=120)
        client.captureScreen(out)
        client.disconnect()
    except Exception as e:  # vncdotool raises several types
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        api.shutdown()
        sys.exit(2)
    api.shutdown()
    frame = Image.open(out).convert("RGB")
    pixels = list(frame.getdata())
    counts = {}
    for p in pixels:
        counts[p] = counts.get(p, 0) + 1
    colour, n = max(counts.items(), key=lambda kv: kv[1])
    result = {
        "width": frame.width,
        "height": frame.height,
        "most_common": list(colour),
        "most_common_fraction": n / len(pixels),
    }
    if reference:
        ref = Image.open(reference).convert("RGB")
        result["reference_size"] = [ref.width, ref.height]
        if ref.size == frame.size:
            differ = sum(
                1
                for a, b in zip(pixels, ref.getdata())
                if max(abs(x - y) for x, y in zip(a, b)) > 8
            )
            result["differing_fraction"] = differ / len(pixels)
    print(json.dumps(result))


main()
