"""Crash to retry scheduled: N_SLEEP long-running agents supervised, N_CRASH agents
that crash with a transient finding; latency = the retry_scheduled event's time minus the
shim's recorded end of the crashed process. Usage: python3 bench/retry_latency.py 1000 200"""
import json, os, subprocess, sys, tempfile, time
B = os.environ.get("CORRAL_BIN", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "corral"))
N_SLEEP, N_CRASH = int(sys.argv[1]), int(sys.argv[2])
ws = tempfile.mkdtemp(prefix="corral-retry-")
open(os.path.join(ws, "corral.toml"), "w").write('[defaults]\nbackoff = { initial = "10m" }\nmax_retries = 1\n[health]\nmax_concurrent = 5000\nbreaker_failures = 0\n')
env = dict(os.environ, PATH=os.path.dirname(B) + ":" + os.environ["PATH"])
def c(*a, check=True):
    return subprocess.run([B, *a], cwd=ws, env=env, capture_output=True, text=True, check=check)
t0 = time.time()
for i in range(N_SLEEP):
    c("spawn", "--role", "S", "--task", "t", "--", "sleep", "600")
print(f"{N_SLEEP} sleepers spawned in {time.time()-t0:.1f}s", file=sys.stderr)
crash = []
for i in range(N_CRASH):
    crash.append(c("spawn", "--role", "C", "--task", "t", "--", "sh", "-c", "corral report --status failed --finding 'API rate limit exceeded'; exit 1").stdout.strip())
deadline = time.time() + 120
while time.time() < deadline:
    st = json.loads(c("status", "--role", "C", "--json").stdout)
    if all(a["status"] == "retrying" for a in st): break
    time.sleep(0.5)
ev = [json.loads(l) for l in c("events").stdout.splitlines()]
ended, sched = {}, {}
from datetime import datetime
def ts(s): return datetime.fromisoformat(s).timestamp()
for e in ev:
    a = e.get("agentId")
    if a in crash:
        if e["kind"] == "exited" and e["data"].get("endedAt"): ended[a] = ts(e["data"]["endedAt"])
        if e["kind"] == "retry_scheduled": sched[a] = ts(e["at"])
lat = sorted((sched[a] - ended[a]) * 1000 for a in crash if a in sched and a in ended)
print(f"n={len(lat)} of {N_CRASH}; p50={lat[len(lat)//2]:.1f} ms p90={lat[int(len(lat)*0.9)]:.1f} ms p99={lat[min(len(lat)-1,int(len(lat)*0.99))]:.1f} ms max={lat[-1]:.1f} ms")
st = json.loads(c("status", "--json").stdout)
for a in st:
    if a.get("pid"):
        try: os.killpg(a["pid"], 9)
        except Exception: pass
c("daemon", "stop", check=False)
print("load", open("/proc/loadavg").read().strip())
