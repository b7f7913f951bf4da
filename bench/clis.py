#!/usr/bin/env python3
"""corral on real agent CLIs and on stream agents, beside running them by hand.

1. Overhead on a real CLI run: from starting `corral spawn` (or the bare CLI, by hand) to
   the first request of that run reaching the fake model server (tests/fake_model), for
   Claude Code and Codex as installed by scripts/test.sh (target/test-deps), median of N.
2. Stream agents: A agents of the claude-code adapter, each printing E stream-json events a
   second (`corral-bench emit`), parsed as they are written: the supervisor's CPU (% of one
   core) and RSS growth over the run, and the shims' CPU (where the parsing happens).

Usage: bench/clis.py [--runs 20] [--agents 50] [--rate 200] [--seconds 30] [--out FILE]
Prints a Markdown section (also written to FILE with --out). Needs target/release/corral
and bench/harness/target/release/corral-bench (bench/run.sh builds both).
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
BIN = os.path.join(ROOT, "target/test-deps/node_modules/.bin")
SERVER = os.path.join(ROOT, "tests/fake_model/server.py")
TICKS = os.sysconf("SC_CLK_TCK")

CODEX_CONFIG = """model_provider = "fake"
model = "gpt-5.1-codex"
check_for_update_on_startup = false
[analytics]
enabled = false
[features]
plugins = false
unbounded_connection_retries = false
[model_providers.fake]
name = "fake"
base_url = "http://127.0.0.1:{port}/v1"
wire_api = "responses"
env_key = "FAKE_MODEL_KEY"
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 20000
"""


class Model:
    """The fake model server: every request gets a final answer."""

    def __init__(self, tmp):
        script = os.path.join(tmp, "script.json")
        with open(script, "w") as f:
            json.dump({"conversations": [{"match": "", "turns": [{"text": "done", "repeat": True}]}]}, f)
        self.record = os.path.join(tmp, "record.jsonl")
        self.proc = subprocess.Popen([sys.executable, SERVER, script, self.record, "--max-lifetime", "1800"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def first_request_with(self, mark, limit=60.0):
        """The time the first POST whose body holds `mark` arrived."""
        end = time.time() + limit
        while time.time() < end:
            try:
                with open(self.record) as f:
                    for line in f:
                        r = json.loads(line)
                        if r.get("method") == "POST" and mark in json.dumps(r.get("body")):
                            return r["t"]
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.002)
        raise RuntimeError(f"no request with {mark!r} reached the model server in {limit}s")

    def stop(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def capacity(ws, n):
    """The workspace's corral.toml (as `corral init` wrote it) with room for n agents at once."""
    path = os.path.join(ws, "corral.toml")
    with open(path) as f:
        text = f.read()
    text = re.sub(r"(?m)^max_concurrent = \d+", f"max_concurrent = {n}", text)
    with open(path, "w") as f:
        f.write(text)


def cli_env(cli, home, port):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["PATH"] = f"{os.path.dirname(CORRAL)}:{BIN}:{env.get('PATH', '')}"
    env["HOME"] = home
    for k in ("ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(k, None)
    if cli == "claude":
        env.update({"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}", "ANTHROPIC_API_KEY": "fake-key",
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
                    "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_MAX_RETRIES": "0"})
    else:
        env.update({"CODEX_HOME": home, "FAKE_MODEL_KEY": "fake-key"})
    return env


def bare_argv(cli, prompt):
    if cli == "claude":
        return [os.path.join(BIN, "claude"), "-p", prompt, "--output-format", "stream-json", "--verbose",
                "--allowedTools", "Bash(corral report *),Bash(corral handoff *),Read,Edit,Write"]
    return [os.path.join(BIN, "codex"), "exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write",
            "-c", "allow_login_shell=false", prompt]


def overhead(cli, runs):
    tmp = tempfile.mkdtemp(prefix=f"corral-bench-{cli}-")
    model = Model(tmp)
    try:
        home = os.path.join(tmp, "home")
        ws = os.path.join(tmp, "ws")
        os.makedirs(home)
        os.makedirs(ws)
        if cli == "codex":
            with open(os.path.join(home, "config.toml"), "w") as f:
                f.write(CODEX_CONFIG.format(port=model.port))
        env = cli_env(cli, home, model.port)
        agent = "claude-code" if cli == "claude" else "codex"
        subprocess.run([CORRAL, "init", "--agent", agent], cwd=ws, env=env, check=True, capture_output=True)
        capacity(ws, 100)
        subprocess.run([CORRAL, "health"], cwd=ws, env=env, check=True, capture_output=True)
        rows = {"bare": ([], []), "corral": ([], [])}
        stamps = os.path.join(tmp, "stamps")
        os.makedirs(stamps)

        def stamp_of(path, limit=60.0):
            end = time.time() + limit
            while time.time() < end:
                try:
                    with open(path) as f:
                        text = f.read().strip()
                    if text:
                        return int(text) / 1e9
                except FileNotFoundError:
                    pass
                time.sleep(0.0005)
            raise RuntimeError(f"{path} was never stamped")

        for i in range(runs + 1):
            for how in ("bare", "corral"):
                mark = f"bench-{how}-{i}-{time.time_ns()}"
                stamp = os.path.join(stamps, mark)
                argv = [PROBE, "stamp-exec", stamp] + bare_argv(cli, mark)
                t0 = time.time()
                if how == "bare":
                    p = subprocess.Popen(argv, cwd=ws, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                else:
                    out = subprocess.run([CORRAL, "spawn", "--role", "W", "--task", mark, "--adapter", agent, "--"]
                                         + argv, cwd=ws, env=env, check=True, capture_output=True, text=True)
                started, first = stamp_of(stamp), model.first_request_with(mark)
                if how == "bare":
                    p.wait(120)
                else:
                    subprocess.run([CORRAL, "wait", out.stdout.strip(), "--timeout", "120s"], cwd=ws, env=env,
                                   capture_output=True)
                if i > 0:  # the first of each warms the caches
                    rows[how][0].append((started - t0) * 1000)
                    rows[how][1].append((first - t0) * 1000)
        subprocess.run([CORRAL, "daemon", "stop"], cwd=ws, env=env, capture_output=True)
        return rows
    finally:
        model.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def proc_cpu(pid):
    """utime + stime of a process and its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def shims_cpu(ws):
    """CPU of every live shim of this workspace, by pid."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "corral-shim":
                    continue
            if os.readlink(f"/proc/{pid}/cwd") != ws:
                continue
            out[pid] = proc_cpu(pid)
        except OSError:
            pass
    return out


def streams(agents, rate, seconds):
    ws = tempfile.mkdtemp(prefix="corral-bench-streams-")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        subprocess.run([CORRAL, "init"], cwd=ws, env=env, check=True, capture_output=True)
        capacity(ws, agents + 10)
        subprocess.run([CORRAL, "health"], cwd=ws, env=env, check=True, capture_output=True)
        st = json.loads(subprocess.run([CORRAL, "daemon", "status", "--json"], cwd=ws, env=env, check=True,
                                       capture_output=True, text=True).stdout)
        sup = st["pid"]
        rss0 = proc_rss(sup)
        ids = []
        for i in range(agents):
            out = subprocess.run([CORRAL, "spawn", "--role", "W", "--task", f"stream {i}", "--adapter", "claude-code",
                                  "--", PROBE, "emit", str(rate), str(seconds)],
                                 cwd=ws, env=env, check=True, capture_output=True, text=True)
            ids.append(out.stdout.strip())
        # The window: every agent streaming; the first and last seconds left out.
        time.sleep(2)
        c0, s0, t0 = proc_cpu(sup), shims_cpu(ws), time.time()
        time.sleep(max(1, seconds - 5))
        c1, s1, t1 = proc_cpu(sup), shims_cpu(ws), time.time()
        rss_peak = proc_rss(sup)
        subprocess.run([CORRAL, "wait", "--all", "--timeout", f"{seconds + 60}s"], cwd=ws, env=env,
                       capture_output=True)
        rss1 = proc_rss(sup)
        status = json.loads(subprocess.run([CORRAL, "status", "--json"], cwd=ws, env=env, check=True,
                                           capture_output=True, text=True).stdout)
        complete = sum(1 for a in status if a["status"] == "complete")
        turns = sum(a.get("turns") or 0 for a in status)
        shim = sum(s1[p] - s0[p] for p in s1 if p in s0)
        n_shims = len([p for p in s1 if p in s0])
        subprocess.run([CORRAL, "daemon", "stop"], cwd=ws, env=env, capture_output=True)
        span = t1 - t0
        return {
            "sup_cpu": (c1 - c0) / span * 100, "rss0": rss0, "rss_peak": rss_peak, "rss1": rss1,
            "shim_cpu_each": shim / max(1, n_shims) / span * 100, "complete": complete, "agents": agents,
            "turns": turns, "expected_turns": agents * rate * seconds, "span": span,
        }
    finally:
        subprocess.run(["pkill", "-f", ws], capture_output=True)
        shutil.rmtree(ws, ignore_errors=True)


def status_with_costs(n, runs=20):
    """`status --json` over n finished agents that carry cost, tokens, turns and a session
    (claude-code adapter), beside n plain ones."""
    out = {}
    for kind in ("plain", "costs"):
        ws = tempfile.mkdtemp(prefix=f"corral-bench-{kind}-")
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
            subprocess.run([CORRAL, "init"], cwd=ws, env=env, check=True, capture_output=True)
            capacity(ws, 2000)
            for i in range(n):
                argv = [PROBE, "emit", "1", "1"] if kind == "costs" else ["true"]
                extra = ["--adapter", "claude-code"] if kind == "costs" else []
                subprocess.run([CORRAL, "spawn", "--role", "W", "--task", f"agent {i}", *extra, "--", *argv],
                               cwd=ws, env=env, check=True, capture_output=True)
            subprocess.run([CORRAL, "wait", "--all", "--timeout", "600s"], cwd=ws, env=env, capture_output=True)
            views = json.loads(subprocess.run([CORRAL, "status", "--json"], cwd=ws, env=env, check=True,
                                              capture_output=True, text=True).stdout)
            t = []
            for _ in range(runs + 1):
                t0 = time.perf_counter()
                subprocess.run([CORRAL, "status", "--json"], cwd=ws, env=env, check=True, capture_output=True)
                t.append((time.perf_counter() - t0) * 1000)
            out[kind] = (statistics.median(t[1:]), sum(1 for v in views if v.get("costUsd") is not None), len(views))
            subprocess.run([CORRAL, "daemon", "stop"], cwd=ws, env=env, capture_output=True)
        finally:
            shutil.rmtree(ws, ignore_errors=True)
    return out


def ms(v):
    return f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--out")
    ap.add_argument("--status-agents", type=int, default=1000)
    ap.add_argument("--only", choices=["overhead", "streams", "costs"])
    a = ap.parse_args()
    load = os.getloadavg()
    lines = ["## Real agent CLIs and stream agents", "",
             f"`bench/clis.py --runs {a.runs} --agents {a.agents} --rate {a.rate} --seconds {a.seconds}` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average at start "
             f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}).", ""]
    if a.only in (None, "overhead"):
        lines += ["Overhead of corral on a real CLI run. The CLI is started either by hand or by `corral spawn "
                  "--adapter ...` (its output read as it is written), with the same arguments, behind "
                  "`corral-bench stamp-exec`, which stamps the clock and then becomes the CLI: *to exec* is "
                  "starting the submitting process to the CLI's first instruction (where corral's work ends), "
                  "*to first request* is to that run's first request reaching the fake model server (the "
                  "CLI's own start-up, the same either way, and as noisy as Node's). Alternating, "
                  f"{a.runs} runs each after one warm-up of each; medians.", "",
                  "| CLI | to exec, by hand | to exec, corral | corral's overhead (target <= 5 ms) "
                  "| to first request, by hand | to first request, corral |",
                  "|---|---:|---:|---:|---:|---:|"]
        for cli in ("claude", "codex"):
            r = overhead(cli, a.runs)
            med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in r.items()}
            name = "Claude Code 2.1.328" if cli == "claude" else "Codex 0.169.0"
            lines.append(f"| {name} | {ms(med['bare'][0])} | {ms(med['corral'][0])} | "
                         f"{med['corral'][0] - med['bare'][0]:+.2f} ms | {ms(med['bare'][1])} | "
                         f"{ms(med['corral'][1])} |")
        lines.append("")
    if a.only in (None, "streams"):
        r = streams(a.agents, a.rate, a.seconds)
        lines += [f"{r['agents']} agents of the claude-code adapter, each printing {a.rate} stream-json events a "
                  f"second for {a.seconds} s (`corral-bench emit`), parsed as they are written (by each agent's "
                  f"shim; the supervisor reads what the shim made of it). Measured over {r['span']:.0f} s with "
                  "every agent streaming:", "",
                  "| | figure | target |", "|---|---:|---:|",
                  f"| supervisor CPU | {r['sup_cpu']:.1f} % of one core | < 5 % |",
                  f"| supervisor RSS: before, while streaming, after | {r['rss0']:.1f} / {r['rss_peak']:.1f} / "
                  f"{r['rss1']:.1f} MiB (growth {r['rss_peak'] - r['rss0']:+.1f} MiB) | growth < 20 MiB |",
                  f"| each shim's CPU (reading, logging and parsing its agent's stream) | {r['shim_cpu_each']:.1f} % "
                  "of one core | |",
                  f"| agents complete, turns counted | {r['complete']} of {r['agents']}, {r['turns']} of "
                  f"{r['expected_turns']} | all |", ""]
    if a.only in (None, "costs"):
        r = status_with_costs(a.status_agents)
        lines += [f"`status --json` over {a.status_agents:,} finished agents, median of 20: agents of the "
                  "claude-code adapter carrying cost, tokens, turns and a session, beside plain agents:", "",
                  "| agents | `status --json` | agents with a cost |", "|---|---:|---:|",
                  f"| plain | {r['plain'][0]:.2f} ms | {r['plain'][1]} of {r['plain'][2]} |",
                  f"| with cost columns | {r['costs'][0]:.2f} ms | {r['costs'][1]} of {r['costs'][2]} |", ""]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
