"""Orchestrator side of `corral mcp`, driven by the official MCP Python SDK client: lists the
tools and their input schemas, spawns two agents (one completes with a handoff, one fails
permanently and is escalated), waits for them while collecting progress notifications, reads
their status, aggregates, and resolves the escalation; then spawns a long agent twice with
one idempotency key, waits for it past a short timeout, kills it, retries it and kills it
again. Writes everything it saw, as JSON, to
the file named by its first argument."""

import asyncio
import json
import sys

from corral_client import call, session


async def main(out: str) -> None:
    seen: dict = {}
    async with session() as s:
        tools = await s.list_tools()
        seen["tools"] = {t.name: {"input": t.input_schema, "output": t.output_schema} for t in tools.tools}

        good = await call(s, "spawn_agent", {"role": "WORKER", "task": "find the port; then `echo $HOME`"})
        bad = await call(s, "spawn_agent", {"role": "BROKEN", "task": "fail for good", "max_retries": 0})
        seen["spawned"] = [good, bad]

        progress: list = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append({"progress": done, "total": total, "message": message})

        seen["wait"] = await call(
            s,
            "wait_agents",
            {"ids": [good["agentId"], bad["agentId"]], "timeout": "30s"},
            progress_callback=on_progress,
        )
        seen["progress"] = progress
        seen["status"] = {a: await call(s, "agent_status", {"id": a}) for a in (good["agentId"], bad["agentId"])}
        seen["list"] = await call(s, "list_agents", {"role": "WORKER"})
        seen["aggregate"] = await call(s, "aggregate", {})
        open_ = await call(s, "list_escalations", {})
        seen["escalations"] = open_
        n = next(e["n"] for e in open_["escalations"] if e["agentId"] == bad["agentId"])
        seen["resolved"] = await call(s, "resolve_escalation", {"n": n, "note": "known breakage; ignore"})
        seen["escalations_after"] = await call(s, "list_escalations", {})
        seen["health"] = await call(s, "health", {})
        seen["tell"] = await call(s, "tell_agent", {"id": good["agentId"], "text": "thanks"})
        seen["memory"] = await call(s, "memory_search", {"query": "port"})

        # A long agent: an idempotent spawn, a wait that runs out, kill, retry, kill.
        key = {"role": "SLEEPER", "task": "sleep", "idempotency_key": "sleeper-1"}
        first = await call(s, "spawn_agent", key)
        again = await call(s, "spawn_agent", key)
        seen["idempotent"] = [first, again]
        sleeper = first["agentId"]
        seen["wait_timeout"] = await call(s, "wait_agents", {"ids": [sleeper], "timeout": "1s"})
        seen["kill"] = await call(s, "kill_agent", {"id": sleeper, "grace": "1s"})
        seen["retry"] = await call(s, "retry_agent", {"id": sleeper, "context": "try once more"})
        seen["kill_again"] = await call(s, "kill_agent", {"id": sleeper, "grace": "1s"})
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
