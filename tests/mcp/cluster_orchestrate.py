"""An orchestrator on a cluster worker, through `corral mcp` and the official MCP Python SDK
client: spawns a worker that hands off and one that fails for good, waits for both with
progress notifications, reads them, aggregates, reads health, escalations and the learned
memory; then spawns a
sleeper, waits past a short timeout, tells it something and kills it. Arguments: the corral
binary and the file to write everything it saw to, as JSON."""

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corral_client import call, session  # noqa: E402


async def main(corral: str, out: str) -> None:
    seen: dict = {}
    async with session(corral) as s:
        good = await call(s, "spawn_agent", {"role": "WORKER", "task": "find the port"})
        bad = await call(s, "spawn_agent", {"role": "BROKEN", "task": "fail for good", "max_retries": 0})
        seen["spawned"] = [good, bad]
        ids = [good["agentId"], bad["agentId"]]
        progress: list = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append({"progress": done, "total": total, "message": message})

        seen["wait"] = await call(s, "wait_agents", {"ids": ids, "timeout": "60s"}, progress_callback=on_progress)
        seen["progress"] = progress
        seen["status"] = await call(s, "agent_status", {"id": good["agentId"]})
        seen["list"] = await call(s, "list_agents", {})
        seen["aggregate"] = await call(s, "aggregate", {"ids": ids})
        seen["health"] = await call(s, "health", {})
        seen["escalations"] = await call(s, "list_escalations", {})
        seen["memory"] = await call(s, "memory_search", {"query": "port"})

        sleeper = (await call(s, "spawn_agent", {"role": "SLEEPER", "task": "sleep"}))["agentId"]
        seen["wait_timeout"] = await call(s, "wait_agents", {"ids": [sleeper], "timeout": "2s"})
        seen["tell"] = await call(s, "tell_agent", {"id": sleeper, "text": "hello from the orchestrator"})
        seen["kill"] = await call(s, "kill_agent", {"id": sleeper, "grace": "1s"})
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
