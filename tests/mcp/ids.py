"""Agent ids over MCP as a person types them: a number, a unique prefix, and an ambiguous
prefix refused with the candidates. Writes what it saw, as JSON, to the file named by its
first argument."""

import asyncio
import json
import sys

from corral_client import call, error, session


async def main(out: str) -> None:
    seen: dict = {}
    async with session() as s:
        seen["first"] = await call(s, "spawn_agent", {"role": "WORKER", "task": "first"})
        seen["second"] = await call(s, "spawn_agent", {"role": "WORKER", "task": "second"})
        seen["by_number"] = await call(s, "agent_status", {"id": "2"})
        seen["by_prefix"] = await call(s, "agent_status", {"id": "agent-001"})
        seen["ambiguous"] = await error(s, "agent_status", {"id": "agent-00"})
        seen["killed"] = await call(s, "kill_agent", {"id": "1"})
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
