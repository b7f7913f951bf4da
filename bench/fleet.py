#!/usr/bin/env python3
"""Operating many agents: what cleaning and hanging notification hooks cost.

1. `status --json` in a workspace of N agents of which 90 % were cleaned (`corral clean`),
   beside a workspace that only ever had the 10 % (median of 20): cleaned agents must cost
   the status of the live view nothing.
2. Spawn to agent running (the harness's probe, `corral-bench stamp`) while ten
   `[[notify]]` hooks hang (each `sleep 600`, fired by every agent that completes), beside
   the same workspace with no hooks: hooks run off the supervisor's loop.

Usage: bench/fleet.py [--agents 10000] [--spawns 100] [--out FILE]
Needs target/release/corral and bench/harness/target/release/corral-bench.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORRAL = os.environ.get("CORRAL_BIN", os.path.join(ROOT, "target/release/corral"))
PROBE = os.path.join(ROOT, "bench/harness/target/release/corral-bench")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}


def workspace(extra=""):
    ws = tempfile.mkdtemp(prefix="corral-bench-fleet-")
    subprocess.run([CORRAL, "init"], cwd=ws, env=ENV, check=True, capture_output=True)
    path = os.path.join(ws, "corral.toml")
    with open(path) as f:
        text = f.read()
    text = re.sub(r"(?m)^max_concurrent = \d+", "max_concurrent = 2000", text)
    text = re.sub(r"(?m)^breaker_failures = \d+", "breaker_failures = 0", text)
    with open(path, "w") as f:
        f.write(text + extra)
    subprocess.run([CORRAL, "health"], cwd=ws, env=ENV, check=True, capture_output=True)
    return ws


def corral(ws, *args):
    return subprocess.run([CORRAL, *args], cwd=ws, env=ENV, check=True, capture_output=True, text=True).stdout


def fill(ws, n):
    for i in range(n):
        corral(ws, "spawn", "--role", "W", "--task", f"agent {i}", "--", "true")
    corral(ws, "wait", "--all", "--timeout", "600s")


def timed_status(ws, runs=20):
    t = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run([CORRAL, "status", "--json"], cwd=ws, env=ENV, check=True, capture_output=True)
        t.append((time.perf_counter() - t0) * 1000)
    return statistics.median(t[1:])


def stop(ws):
    subprocess.run([CORRAL, "daemon", "stop"], cwd=ws, env=ENV, capture_output=True)
    shutil.rmtree(ws, ignore_errors=True)


def cleaned(agents):
    keep = agents // 10
    big = workspace()
    small = workspace()
    try:
        t0 = time.time()
        fill(big, agents - keep)
        corral(big, "clean")
        fill(big, keep)
        fill(small, keep)
        filled = time.time() - t0
        shown = len(json.loads(corral(big, "status", "--json")))
        return {"big": timed_status(big), "small": timed_status(small), "shown": shown, "keep": keep,
                "agents": agents, "filled": filled}
    finally:
        stop(big)
        stop(small)


def latency(ws, n):
    marks = tempfile.mkdtemp(prefix="corral-bench-marks-")
    out = []
    try:
        for i in range(n + 1):
            m = os.path.join(marks, f"m{i}")
            t0 = time.time_ns()
            corral(ws, "spawn", "--role", "W", "--task", f"probe {i}", "--", PROBE, "stamp", m)
            while True:
                try:
                    with open(m) as f:
                        s = f.read().strip()
                    if s:
                        break
                except FileNotFoundError:
                    pass
                time.sleep(0.0002)
            if i > 0:
                out.append((int(s) - t0) / 1e6)
            time.sleep(0.05)
        return statistics.median(out), sorted(out)[int(len(out) * 0.9)]
    finally:
        shutil.rmtree(marks, ignore_errors=True)


def hooks(spawns):
    hook = '\n[[notify]]\non = ["complete"]\ncommand = ["sleep", "600"]\ntimeout = "15m"\n'
    quiet = workspace()
    hung = workspace(hook * 10)
    try:
        idle = latency(quiet, spawns)
        # Every hook busy (and more queued) before the measurement starts.
        fill(hung, 5)
        time.sleep(1)
        busy = sum(1 for line in subprocess.run(["pgrep", "-af", "sleep 600"], capture_output=True,
                                                text=True).stdout.splitlines() if "sleep 600" in line)
        held = latency(hung, spawns)
        return {"idle": idle, "held": held, "busy": busy}
    finally:
        stop(quiet)
        stop(hung)
        subprocess.run(["pkill", "-f", "^sleep 600$"], capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=10000)
    ap.add_argument("--spawns", type=int, default=100)
    ap.add_argument("--out")
    ap.add_argument("--only", choices=["clean", "hooks"])
    a = ap.parse_args()
    load = os.getloadavg()
    lines = ["## Operating many agents", "",
             f"`bench/fleet.py --agents {a.agents} --spawns {a.spawns}` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average at start "
             f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}).", ""]
    if a.only in (None, "clean"):
        r = cleaned(a.agents)
        lines += [f"`status --json`, median of 20: {r['agents']:,} agents of which {r['agents'] - r['keep']:,} "
                  f"were cleaned (`corral clean`; {r['shown']:,} shown), beside a workspace that only ever had "
                  f"{r['keep']:,}.", "",
                  "| workspace | `status --json` | target |", "|---|---:|---|",
                  f"| {r['agents']:,} agents, {r['agents'] - r['keep']:,} cleaned | {r['big']:.2f} ms | about the same as below |",
                  f"| {r['keep']:,} agents | {r['small']:.2f} ms | |", ""]
    if a.only in (None, "hooks"):
        r = hooks(a.spawns)
        lines += [f"Spawn to agent running (median, p90 of {a.spawns}), with ten `[[notify]]` hooks hanging "
                  f"(`sleep 600`, {r['busy']} running, more queued) beside no hooks:", "",
                  "| | median | p90 |", "|---|---:|---:|",
                  f"| no hooks | {r['idle'][0]:.2f} ms | {r['idle'][1]:.2f} ms |",
                  f"| ten hooks hanging | {r['held'][0]:.2f} ms | {r['held'][1]:.2f} ms |", ""]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
