"""Round trip of `spawn_agent` over stdio: one `corral mcp` server, driven by the official MCP
Python SDK client, asked N times (default 100) to spawn an agent of a role whose command is
`true`. Each figure is the time from sending the tools/call request to reading its result,
measured in the client; the supervisor is already running (one warm-up call starts it).

    python3 bench/mcp_spawn.py [--corral PATH] [-n 100]

PATH defaults to target/release/corral when it exists, else `corral` on PATH.
"""

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

CONFIG = """\
[health]
max_concurrent = 1000
breaker_failures = 0

[roles.BENCH]
command = ["true"]
max_retries = 0
"""


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def measure(corral: str, workspace: str, n: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    params = StdioServerParameters(command=corral, args=["mcp"], env=env, cwd=workspace)
    times = []
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            await s.list_tools()  # the client validates results against the listed schemas
            warm = await s.call_tool("spawn_agent", {"role": "BENCH", "task": "warm-up"})
            if warm.is_error:
                sys.exit(f"spawn_agent failed: {warm.content}")
            for i in range(n):
                t0 = time.perf_counter()
                r = await s.call_tool("spawn_agent", {"role": "BENCH", "task": f"probe {i}"})
                times.append((time.perf_counter() - t0) * 1000)
                if r.is_error:
                    sys.exit(f"spawn_agent failed: {r.content}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corral")
    ap.add_argument("-n", type=int, default=100)
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    release = os.path.join(root, "target", "release", "corral")
    corral = a.corral or (release if os.path.exists(release) else shutil.which("corral"))
    if not corral:
        sys.exit("no corral binary: build with `cargo build --release` or pass --corral PATH")
    corral = os.path.abspath(corral)
    with tempfile.TemporaryDirectory(prefix="corral-mcp-bench") as ws:
        with open(os.path.join(ws, "corral.toml"), "w") as f:
            f.write(CONFIG)
        try:
            times = asyncio.run(measure(corral, ws, a.n))
        finally:
            subprocess.run([corral, "daemon", "stop"], cwd=ws, capture_output=True)
    print(f"spawn_agent round trip over stdio, {len(times)} calls ({corral})")
    print(f"median {statistics.median(times):.2f} ms")
    print(f"p90    {percentile(times, 0.90):.2f} ms")
    print(f"p99    {percentile(times, 0.99):.2f} ms")
    print(f"min    {min(times):.2f} ms, max {max(times):.2f} ms")


if __name__ == "__main__":
    main()
