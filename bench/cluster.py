#!/usr/bin/env python3
"""Cluster mode: what PostgreSQL between the CLI and the workers costs.

1. Spawn to agent running: `corral spawn` by SQL from a directory with no worker, the agent
   run by the one worker running (its first instruction stamps the clock), median and p99;
   beside a plain local `corral spawn` (no database) and `pueue add` with pueued running.
2. Claims per second: 1,000 trivial agents (`true`) queued at once in front of 3 workers
   (--slots 50 each, `[health] max_concurrent = 150`): queued to all complete, agents/s, and
   the raw claim rate from the `claimed` events' timestamps.
3. Takeover: kill -9 of a worker running agents to those agents running on the other worker,
   for leases of 2 s, 4 s and 8 s (heartbeat lease/10, margin lease/3, grace lease/4), median
   of 3 runs each, beside the theoretical lease + grace.
4. `corral status --json` by SQL with 100, 1,000 and 10,000 agents queued in the database
   (by SQL, no worker): median of 20 runs each.

Everything runs against a throwaway PostgreSQL on 127.0.0.1 (fsync off) started here, in a
temporary directory; every worker, local supervisor, agent, pueued and the database are
stopped at the end, also on an error, Ctrl-C or the overall time limit (--limit).

Usage: bench/cluster.py [--quick] [--bin target/debug/corral] [--only spawn,claims,takeover,status]
                        [--out FILE] [--limit SECONDS]
The default binary is target/release/corral (build it first: cargo build --release).
Needs PostgreSQL's server binaries under /usr/lib/postgresql/*/bin; uses bench/.peers/bin/pueue
(bench/run.sh installs it) when it is there, and the harness's probe
bench/harness/target/release/corral-bench when it is built (else `date +%s%N` under sh).
"""

import argparse
import glob
import json
import math
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "bench-cluster-Pw"
# Inherited by every process this script starts (workers, supervisors, agents, pueued), so
# whatever is left at the end is found by its environment and killed by pid.
TOKEN_VAR = "BENCH_CLUSTER_TOKEN"
TOKEN = f"{os.getpid()}-{time.time_ns()}"
PROBE_BIN = os.path.join(ROOT, "bench/harness/target/release/corral-bench")
PUEUE = os.path.join(ROOT, "bench/.peers/bin/pueue")
PUEUED = os.path.join(ROOT, "bench/.peers/bin/pueued")
TARGETS = ["spawn", "claims", "takeover", "status"]


class Fail(Exception):
    pass


def log(msg):
    sys.stderr.write(f"== {msg}\n")
    sys.stderr.flush()


def base_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_") and k != "PGPASSWORD"}
    env[TOKEN_VAR] = TOKEN
    return env


def wait_for(what, limit, cond, every=0.02):
    end = time.monotonic() + limit
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise Fail(f"timed out after {limit:.0f} s waiting for {what}")
        time.sleep(every)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantile(xs, q):
    """Nearest rank."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


# ---- PostgreSQL ------------------------------------------------------------------------


class Pg:
    def __init__(self, base):
        bins = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.isfile(os.path.join(d, "initdb"))]
        if not bins:
            raise Fail("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: install PostgreSQL "
                       "(apt-get install postgresql) or run ./scripts/test.sh once, which installs it")
        bins.sort(key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)
        self.bin = bins[-1]
        self.dir = os.path.join(base, "pg")
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o777)
        self.data = os.path.join(self.dir, "data")
        self.port = None
        self.pid = None
        pw = os.path.join(self.dir, "pw")
        with open(pw, "w") as f:
            f.write(PASSWORD)
        os.chmod(pw, 0o644)
        r = subprocess.run(self._as_pg("initdb") + ["-D", self.data, "-U", "corral", "--auth-local=trust",
                                                     "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
                                                     "--no-sync", "--no-instructions", f"--pwfile={pw}"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Fail(f"initdb failed: {r.stderr.strip()}")
        for _ in range(5):
            port = free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {self.dir} -c fsync=off -c synchronous_commit=off "
                    f"-c full_page_writes=off -c max_connections=200")
            r = subprocess.run(self._as_pg("pg_ctl") + ["-D", self.data, "-l", os.path.join(self.dir, "server.log"),
                                                         "-w", "-t", "30", "-o", opts, "start"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                self.port = port
                with open(os.path.join(self.data, "postmaster.pid")) as f:
                    self.pid = int(f.readline())
                self.sql("CREATE DATABASE corral", db="postgres")
                return
        raise Fail("PostgreSQL did not start; see its log: " + os.path.join(self.dir, "server.log"))

    def _as_pg(self, prog):
        path = os.path.join(self.bin, prog)
        return ["runuser", "-u", "postgres", "--", path] if os.geteuid() == 0 else [path]

    @property
    def url(self):
        return f"postgres://corral@127.0.0.1:{self.port}/corral"

    def sql(self, q, db="corral"):
        r = subprocess.run([os.path.join(self.bin, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-h", self.dir, "-p", str(self.port), "-U", "corral", "-d", db, "-f", "-"],
                           input=q, capture_output=True, text=True)
        if r.returncode != 0:
            raise Fail(f"psql: {r.stderr.strip()}\nin: {q[:500]}")
        return r.stdout.strip()

    def stop(self):
        if self.pid is None:
            return
        subprocess.run(self._as_pg("pg_ctl") + ["-D", self.data, "-m", "immediate", "-w", "-t", "10", "stop"],
                       capture_output=True)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.pid = None


# ---- corral ----------------------------------------------------------------------------


class Bench:
    def __init__(self, corral, base, pg):
        self.corral = corral
        self.base = base
        self.pg = pg
        self.workers = []  # (Popen, data dir)
        self.data_dirs = []
        self.local_ws = []
        self.pueued = None
        self.markers = os.path.join(base, "markers")
        os.makedirs(self.markers)
        self.probe_kind = "corral-bench stamp" if os.access(PROBE_BIN, os.X_OK) else "sh -c 'date +%s%N ...'"

    def cluster_env(self):
        env = base_env()
        env["PGPASSWORD"] = PASSWORD
        env["CORRAL_DATABASE_URL"] = self.pg.url
        return env

    def workspace(self, name, toml):
        d = os.path.join(self.base, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "corral.toml"), "w") as f:
            f.write(toml)
        return d

    def run(self, ws, *args, env=None, check=True):
        r = subprocess.run([self.corral, *args], cwd=ws, env=env or self.cluster_env(), capture_output=True,
                           text=True, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise Fail(f"corral {' '.join(args)} (in {ws}) exited {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def start_worker(self, ws, name, *extra):
        d = os.path.join(ws, name)
        os.makedirs(d, exist_ok=True)
        logf = open(os.path.join(ws, f"{name}.log"), "ab")
        p = subprocess.Popen([self.corral, "worker", "--data-dir", d, *extra], cwd=ws, env=self.cluster_env(),
                             stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
        logf.close()
        self.workers.append((p, d))
        self.data_dirs.append(d)
        return p

    def wait_workers(self, workspace, pids):
        pl = ",".join(str(p) for p in pids)
        q = f"SELECT count(*) FROM workers WHERE workspace = '{workspace}' AND state = 'active' AND pid IN ({pl})"

        def registered():
            try:
                return self.pg.sql(q) == str(len(pids))
            except Fail:
                return False  # the schema is not there yet
        wait_for(f"{len(pids)} worker(s) to register in {workspace}", 60, registered, every=0.1)

    def stop_workers(self):
        for p, _ in self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, _ in self.workers:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.workers = []
        # The workers' local supervisors.
        for d in self.data_dirs:
            for e in glob.glob(os.path.join(d, "epochs", "*")):
                subprocess.run([self.corral, "daemon", "stop", "--data-dir", e], cwd=d, env=base_env(),
                               capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
                kill_lock_holder(os.path.join(e, "daemon.lock"))
        self.data_dirs = []
        reap()

    def stop_all(self):
        self.stop_workers()
        for ws in self.local_ws:
            subprocess.run([self.corral, "daemon", "stop"], cwd=ws, env=base_env(), capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=30)
        self.local_ws = []
        self.stop_pueue()
        reap()

    def stop_pueue(self):
        if self.pueued is None:
            return
        p, cfg = self.pueued
        subprocess.run([PUEUE, "-c", cfg, "shutdown"], capture_output=True, env=base_env(), timeout=10)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        self.pueued = None

    def probe(self, marker):
        """The probe agent's argv."""
        if os.access(PROBE_BIN, os.X_OK):
            return [PROBE_BIN, "stamp", marker]
        return ["sh", "-c", self.probe_script(marker)]

    def probe_shell(self, marker):
        """The same as one shell command line, for `pueue add` (which runs it with sh -c)."""
        if os.access(PROBE_BIN, os.X_OK):
            return shlex.join(self.probe(marker))
        return self.probe_script(marker)

    @staticmethod
    def probe_script(marker):
        m = shlex.quote(marker)
        return f"date +%s%N > {m}.tmp && mv {m}.tmp {m}"


def kill_lock_holder(lock):
    try:
        with open(lock) as f:
            pid = int(f.read().strip())
        if pid > 1:
            os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def reap():
    """Kills, by pid, every process still running with this run's token in its environment."""
    needle = f"{TOKEN_VAR}={TOKEN}".encode()
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    os.kill(int(d), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def cluster_toml(workspace, max_concurrent=2000, lease_ms=None):
    t = f"[health]\nmax_concurrent = {max_concurrent}\nbreaker_failures = 0\n\n[cluster]\nworkspace = \"{workspace}\"\n"
    if lease_ms:
        t += (f"lease = \"{lease_ms}ms\"\nheartbeat = \"{lease_ms // 10}ms\"\nlease_margin = \"{lease_ms // 3}ms\"\n"
              f"takeover_grace = \"{lease_ms // 4}ms\"\n")
    return t


def queue_sql(b, workspace, template_ws, n):
    """Queues n copies of the template workspace's first agent into `workspace` in one
    transaction, numbered on from the workspace's counter, a `spawned` event each, and wakes
    the workspace's listeners, as a batch of spawns would; returns the database's clock at
    the end of the transaction (seconds since the epoch)."""
    w = workspace
    return b.pg.sql(f"""
INSERT INTO workspaces (id) VALUES ('{w}') ON CONFLICT (id) DO NOTHING;
BEGIN;
SELECT next_number AS nn, event_seq AS es FROM workspaces WHERE id = '{w}' FOR UPDATE \\gset
INSERT INTO agents (workspace, id, seq, role, state, placement, body, run_after)
  SELECT '{w}', 'agent-' || lpad((:nn + i)::text, greatest(3, length((:nn + i)::text)), '0') || '-' || t.role, :nn + i, t.role, 'queued', t.placement,
         t.body, now()
  FROM (SELECT * FROM agents WHERE workspace = '{template_ws}' ORDER BY seq LIMIT 1) t, generate_series(0, {n - 1}) i;
INSERT INTO events (workspace, seq, agent_id, kind, data, fence)
  SELECT '{w}', :es + 1 + i, 'agent-' || lpad((:nn + i)::text, greatest(3, length((:nn + i)::text)), '0') || '-' || t.role, 'spawned',
         jsonb_build_object('role', t.role), 0
  FROM (SELECT role FROM agents WHERE workspace = '{template_ws}' ORDER BY seq LIMIT 1) t, generate_series(0, {n - 1}) i;
UPDATE workspaces SET next_number = next_number + {n}, event_seq = event_seq + {n} WHERE id = '{w}';
SELECT pg_notify('corral:{w}', (:es + {n})::text);
SELECT extract(epoch FROM clock_timestamp());
COMMIT;
""").splitlines()[-1]


def template(b, name, command):
    """A workspace holding one agent spawned by `corral spawn` (never run: no worker serves
    it), whose row the bulk queueing copies."""
    ws = b.workspace(f"tpl-{name}", cluster_toml(f"tpl-{name}"))
    b.run(ws, "spawn", "--role", "BENCH", "--task", "bench agent", "--", *command)
    return f"tpl-{name}"


# ---- 1. spawn to running ---------------------------------------------------------------


def read_marker(path):
    try:
        with open(path) as f:
            s = f.read().strip()
        return int(s) if s else None
    except FileNotFoundError:
        return None


def latency(b, name, submit, n):
    """Probe 0 warms up; then n probes one at a time, 0-200 ms apart at random (the workers
    poll every 200 ms: a fixed pace would lock onto one phase of it)."""
    out, returned = [], []
    rng = random.Random(7)
    for i in range(n + 1):
        if i > 0:
            time.sleep(rng.uniform(0, 0.2))
        m = os.path.join(b.markers, f"{name}-{i}")
        t0 = time.time_ns()
        submit(m)
        t_ret = time.time_ns()
        stamp = wait_for(f"the probe agent of {name} to write {m}", 30, lambda: read_marker(m), every=0.0005)
        if i > 0:
            out.append((stamp - t0) / 1e6)
            returned.append((t_ret - t0) / 1e6)
    return {"running": out, "returned": returned}


def spawn_target(b, n):
    res = {}
    # Cluster: one worker; the CLI from a directory with no worker.
    ws = b.workspace("spawn", cluster_toml("spawn"))
    client = b.workspace("spawn-client", cluster_toml("spawn"))
    b.run(client, "status", "--json")  # the schema, so the worker can be counted
    w = b.start_worker(ws, "w0")
    b.wait_workers("spawn", [w.pid])
    log(f"(spawn) cluster: {n} spawns by SQL, agent on 1 worker")
    res["cluster"] = latency(b, "cluster", lambda m: b.run(client, "spawn", "--role", "BENCH", "--task", "probe",
                                                           "--", *b.probe(m)), n)
    b.stop_workers()
    # Single machine: the local supervisor, no database.
    local = b.workspace("spawn-local", "[health]\nmax_concurrent = 2000\nbreaker_failures = 0\n")
    b.local_ws.append(local)
    log(f"(spawn) single machine: {n} local spawns")
    res["local"] = latency(b, "local", lambda m: b.run(local, "spawn", "--role", "BENCH", "--task", "probe", "--",
                                                       *b.probe(m), env=base_env()), n)
    # pueue.
    if os.access(PUEUE, os.X_OK) and os.access(PUEUED, os.X_OK):
        d = os.path.join(b.base, "pueue")
        os.makedirs(os.path.join(d, "run"))
        cfg = os.path.join(d, "pueue.yml")
        with open(cfg, "w") as f:
            f.write(f"shared:\n  pueue_directory: {d}/state\n  runtime_directory: {d}/run\n  use_unix_socket: true\n"
                    f"  unix_socket_path: {d}/run/pueue.socket\n")
        logf = open(os.path.join(d, "pueued.log"), "wb")
        p = subprocess.Popen([PUEUED, "-c", cfg], cwd=d, env=base_env(), stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=logf, start_new_session=True)
        logf.close()
        b.pueued = (p, cfg)

        def pueue(*args):
            return subprocess.run([PUEUE, "-c", cfg, *args], cwd=d, env=base_env(), capture_output=True,
                                  stdin=subprocess.DEVNULL)
        wait_for("pueued to accept connections", 15, lambda: pueue("status", "--json").returncode == 0, every=0.05)
        pueue("parallel", "1000")
        version = subprocess.run([PUEUE, "--version"], capture_output=True, text=True).stdout.strip()
        log(f"(spawn) {version}: {n} adds")

        def add(m):
            r = pueue("add", "--", b.probe_shell(m))
            if r.returncode != 0:
                raise Fail(f"pueue add: {r.stderr.decode(errors='replace').strip()}")
        res["pueue"] = latency(b, "pueue", add, n)
        res["pueue_version"] = version
        b.stop_pueue()
    return res


# ---- 2. claims -------------------------------------------------------------------------


def claims_target(b, n):
    tpl = template(b, "true", ["true"])
    ws = b.workspace("claims", cluster_toml("claims", max_concurrent=150))
    b.run(ws, "status", "--json")
    pids = [b.start_worker(ws, f"w{i}", "--slots", "50").pid for i in range(3)]
    b.wait_workers("claims", pids)
    log(f"(claims) {n} agents queued at once, 3 workers")
    t0 = float(queue_sql(b, "claims", tpl, n))
    q = "SELECT count(*) FROM agents WHERE workspace = 'claims' AND state IN ('complete', 'failed', 'escalated')"
    wait_for(f"{n} agents to finish", 600, lambda: b.pg.sql(q) == str(n), every=0.05)
    row = b.pg.sql(f"""
SELECT (SELECT count(*) FROM agents WHERE workspace = 'claims' AND state = 'complete'),
       extract(epoch FROM (SELECT max(ended_at) FROM attempts WHERE workspace = 'claims')) - {t0},
       count(*), count(DISTINCT (at, worker)), extract(epoch FROM max(at) - min(at)),
       (SELECT count(DISTINCT worker) FROM attempts WHERE workspace = 'claims')
FROM events WHERE workspace = 'claims' AND kind = 'claimed'""").split("|")
    complete, took, claimed, batches, span, workers = (int(row[0]), float(row[1]), int(row[2]), int(row[3]),
                                                       float(row[4]), int(row[5]))
    b.stop_workers()
    return {"n": n, "complete": complete, "took": took, "claimed": claimed, "batches": batches, "span": span,
            "workers": workers}


# ---- 3. takeover -----------------------------------------------------------------------


def ledger(path):
    recs = []
    try:
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) == 3 and p[2].isdigit():
                    recs.append((p[0], p[1], int(p[2])))
    except FileNotFoundError:
        pass
    return recs


def takeover_once(b, lease_ms, run, agents):
    name = f"lease{lease_ms}-{run}"
    ws = b.workspace(name, cluster_toml(name, lease_ms=lease_ms))
    led = os.path.join(ws, "ledger")
    open(led, "w").close()
    secs = 3 * lease_ms // 1000 + 10  # bounded: they end on their own
    script = f'echo "$CORRAL_AGENT_ID $CORRAL_FENCE $(date +%s%N)" >> {led}; sleep {secs}'
    b.run(ws, "status", "--json")
    a = b.start_worker(ws, "wa")
    b.wait_workers(name, [a.pid])
    for i in range(agents):
        b.run(ws, "spawn", "--role", "BENCH", "--task", f"takeover {i}", "--", "sh", "-c", script)
    wait_for(f"{agents} agents to start on the first worker", 60,
             lambda: len({r[0] for r in ledger(led)}) == agents, every=0.05)
    bw = b.start_worker(ws, "wb")
    b.wait_workers(name, [a.pid, bw.pid])
    t_kill = time.time_ns()
    a.kill()
    a.wait()
    limit = (lease_ms * 3) / 1000 + 20

    def elsewhere():
        again = {}
        for aid, _, at in ledger(led):
            if at > t_kill and aid not in again:
                again[aid] = at
        return again if len(again) == agents else None
    again = wait_for(f"the dead worker's agents to run elsewhere (lease {lease_ms} ms)", limit, elsewhere, every=0.02)
    b.stop_workers()
    return (min(again.values()) - t_kill) / 1e9, (max(again.values()) - t_kill) / 1e9


def takeover_target(b, leases, runs, agents):
    out = []
    for lease in leases:
        samples = []
        for r in range(runs):
            log(f"(takeover) lease {lease} ms, run {r + 1} of {runs}")
            samples.append(takeover_once(b, lease, r, agents))
        out.append((lease, samples))
    return out


# ---- 4. status -------------------------------------------------------------------------


def status_target(b, sizes, runs):
    tpl = template(b, "status", ["true"])
    ws = b.workspace("status", cluster_toml("status"))
    b.run(ws, "status", "--json")
    have = 0
    out = []
    for size in sizes:
        queue_sql(b, "status", tpl, size - have)
        have = size
        log(f"(status) status --json with {size} agents, {runs} runs")
        shown = len(json.loads(b.run(ws, "status", "--json")))
        t = []
        for _ in range(runs):
            t0 = time.perf_counter()
            b.run(ws, "status", "--json")
            t.append((time.perf_counter() - t0) * 1000)
        out.append((size, statistics.median(t), shown))
    return out


# ---- report ----------------------------------------------------------------------------


def report(a, cmdline, rev, load, b, r):
    L = ["## Cluster mode", "",
         f"`{cmdline}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, corral {rev}, load average at start "
         f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}). A throwaway PostgreSQL {b.pg.bin.split('/')[-2]} on "
         "127.0.0.1 (fsync off) on the same machine; each worker is a `corral worker` with a data dir of its own, "
         "standing in for a machine.", ""]
    if "spawn" in r:
        s = r["spawn"]
        n = len(s["cluster"]["running"])
        L += [f"Spawn to agent running, one probe at a time, {n} probes (after one to warm up), 0 to 200 ms apart at "
              f"random: from just before the submitting command starts to the agent's first instruction (the probe, "
              f"`{b.probe_kind}`, writes the realtime clock).", "",
              "| | median | p99 | the command returned (median) |", "|---|---:|---:|---:|"]

        def row(label, x):
            xs, ret = x["running"], x["returned"]
            return (f"| {label} | {statistics.median(xs):.1f} ms | {quantile(xs, 0.99):.1f} ms | "
                    f"{statistics.median(ret):.1f} ms |")
        L.append(row("cluster: `corral spawn` by SQL from a directory with no worker, the agent on 1 worker",
                     s["cluster"]))
        L.append(row("single machine: `corral spawn` to the local supervisor, no database", s["local"]))
        if "pueue" in s:
            L.append(row(f"{s['pueue_version']}: `pueue add` with pueued running", s["pueue"]))
        L.append("")
        if "pueue" not in s:
            L += ["pueue: not measured (no bench/.peers/bin/pueue; `bench/run.sh` installs pueue 4.0.4 there).", ""]
        L += ["In cluster mode the CLI connects to PostgreSQL, checks the schema and queues the agent in one "
              "insert (the column *the command returned*); the insert's notification wakes the workers, one of "
              "which claims the agent in a transaction and starts it through its local supervisor.", ""]
    if "claims" in r:
        c = r["claims"]
        L += [f"Claims: {c['n']:,} agents (`true`) queued at once by SQL in front of 3 workers (`--slots 50` each, "
              f"`[health] max_concurrent = 150`).", "",
              "| | |", "|---|---:|",
              f"| queued to all complete | {c['took']:.2f} s ({c['complete']:,} complete, on {c['workers']} workers) |",
              f"| agents a second | {c['n'] / c['took']:.0f} |",
              f"| raw claim rate (`claimed` events, first to last) | {(c['claimed'] - 1) / c['span']:.0f} a second "
              f"({c['claimed']:,} claims in {c['batches']:,} claiming transactions over {c['span']:.2f} s) |", ""]
    if "takeover" in r:
        L += ["Takeover: kill -9 of a worker running agents, the other worker already running, to all of the dead "
              "worker's agents started again on the other one (heartbeat lease/10, margin lease/3, grace lease/4).",
              "",
              "| lease | heartbeat | margin | grace | lease + grace | first agent again (median) | all again (median) "
              "| all again, min to max | runs |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for lease, samples in r["takeover"]:
            first = statistics.median(s[0] for s in samples)
            last = [s[1] for s in samples]
            L.append(f"| {lease / 1000:g} s | {lease // 10} ms | {lease // 3} ms | {lease // 4} ms | "
                     f"{(lease + lease // 4) / 1000:.2f} s | {first:.2f} s | {statistics.median(last):.2f} s | "
                     f"{min(last):.2f} to {max(last):.2f} s | {len(samples)} |")
        L.append("")
    if "status" in r:
        L += [f"`corral status --json` by SQL from a directory with no worker, agents queued in the database (no "
              f"worker), median of {a.status_runs}:", "",
              "| agents in the database | `status --json` | agents shown |", "|---:|---:|---:|"]
        for size, med, shown in r["status"]:
            L.append(f"| {size:,} | {med:.1f} ms | {shown:,} |")
        L.append("")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description="Cluster-mode benchmarks (see the top of this file).")
    ap.add_argument("--bin", help="the corral binary (default target/release/corral)")
    ap.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    ap.add_argument("--only", help="comma-separated: " + ", ".join(TARGETS))
    ap.add_argument("--out", help="write the section to this file (default: stdout)")
    ap.add_argument("--limit", type=int, default=1800, help="stop everything after this many seconds (default 1800)")
    a = ap.parse_args()
    only = TARGETS
    if a.only:
        only = [t.strip() for t in a.only.split(",") if t.strip()]
        bad = [t for t in only if t not in TARGETS]
        if bad or not only:
            ap.error(f"--only {a.only}: unknown target {bad[0] if bad else '(none given)'}; the targets are "
                     f"{', '.join(TARGETS)} (e.g. --only spawn,status)")
    corral = os.path.abspath(a.bin or os.path.join(ROOT, "target/release/corral"))
    if not os.access(corral, os.X_OK):
        ap.error(f"{corral} is not an executable corral: build it (cargo build --release) or give one with --bin")
    spawns, claims, leases, runs, agents = (10, 200, [2000, 4000, 8000], 1, 3) if a.quick else \
        (50, 1000, [2000, 4000, 8000], 3, 5)
    sizes = [100, 1000] if a.quick else [100, 1000, 10000]
    a.status_runs = 5 if a.quick else 20
    cmdline = "bench/cluster.py" + (f" --bin {a.bin}" if a.bin else "") + (" --quick" if a.quick else "") + \
        (f" --only {a.only}" if a.only else "")
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip() or "unknown"
    except OSError:
        rev = "unknown"
    load = os.getloadavg()

    def stop(signum, _frame):
        raise Fail(f"stopped by signal {signum}" if signum != signal.SIGALRM else f"over the {a.limit} s limit")
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(s, stop)
    signal.alarm(a.limit)
    base = tempfile.mkdtemp(prefix="corral-bench-cluster-")
    os.chmod(base, 0o755)  # the postgres user reaches its directory inside
    pg = b = None
    r = {}
    try:
        log("starting PostgreSQL")
        pg = Pg(base)
        b = Bench(corral, base, pg)
        if "spawn" in only:
            r["spawn"] = spawn_target(b, spawns)
            b.stop_all()
        if "claims" in only:
            r["claims"] = claims_target(b, claims)
        if "takeover" in only:
            r["takeover"] = takeover_target(b, leases, runs, agents)
        if "status" in only:
            r["status"] = status_target(b, sizes, a.status_runs)
        text = report(a, cmdline, rev, load, b, r)
    except Fail as e:
        sys.stderr.write(f"bench/cluster.py: {e}\n")
        for f in sorted(glob.glob(os.path.join(base, "*", "*.log"))):
            with open(f, errors="replace") as fh:
                tail = fh.read()[-2000:]
            sys.stderr.write(f"--- the end of {os.path.relpath(f, base)}\n{tail}\n")
        return 1
    finally:
        signal.alarm(0)
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        if b:
            b.stop_all()
        if pg:
            pg.stop()
        reap()
        shutil.rmtree(base, ignore_errors=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
