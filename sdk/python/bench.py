"""Latency of the Python SDK against a running daemon: create -> first exec
result, and an exec round trip (``true``), each the median of 20. Prints a
table. Uses $NOOK_SOCKET (default $NOOK_HOME/serve.sock), starting a daemon
there when none runs.

    python3 sdk/python/bench.py            # or NOOK_PYSDK_BENCH=1 scripts/python-sdk-test
"""

from __future__ import annotations

import statistics
import time

from nook import Client, Sandbox

RUNS = 20


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:9.1f} {min(samples) * 1000:9.1f} {max(samples) * 1000:9.1f}"


def main() -> None:
    with Client() as client:
        create_to_result: list[float] = []
        for _ in range(RUNS):
            start = time.perf_counter()
            with Sandbox.create(client=client, memory_mib=256) as sb:
                sb.exec(["true"])
                create_to_result.append(time.perf_counter() - start)
        round_trips: list[float] = []
        with Sandbox.create(client=client, memory_mib=256) as sb:
            sb.exec(["true"])
            for _ in range(RUNS):
                start = time.perf_counter()
                sb.exec(["true"])
                round_trips.append(time.perf_counter() - start)
            engine = sb.info.engine
    print(f"nook Python SDK, engine {engine}, median of {RUNS} (ms)")
    print(f"{'measure':<32} {'median':>9} {'min':>9} {'max':>9}")
    print(f"{'create -> first exec result':<32} {ms(create_to_result)}")
    print(f"{'exec round trip (true)':<32} {ms(round_trips)}")


if __name__ == "__main__":
    main()
