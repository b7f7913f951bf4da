"""`spawn_agent` with a role nobody configured (a warning in the result; an error once the
workspace sets `strict_roles`) and an idempotency key reused for another task (an error
naming the agent); with a broken file, reads go on and spawns are refused. Writes what it saw, as JSON, to the file named by its first argument."""

import asyncio
import json
import sys

from corral_client import call, error, session


async def main(out: str) -> None:
    raw = ["sh", "-c", "exit 0"]
    async with session() as s:
        seen = {
            "typo": await call(s, "spawn_agent", {"role": "IMPLEMNTER", "task": "typo", "command": raw}),
            "known": await call(s, "spawn_agent", {"role": "REVIEWER", "task": "known"}),
            "first": await call(s, "spawn_agent", {"role": "REVIEWER", "task": "t1", "idempotency_key": "k1"}),
            "again": await call(s, "spawn_agent", {"role": "REVIEWER", "task": "t1", "idempotency_key": "k1"}),
            "other_task": await error(s, "spawn_agent", {"role": "REVIEWER", "task": "t2", "idempotency_key": "k1"}),
        }
        with open("corral.toml") as f:
            config = f.read()
        with open("corral.toml", "w") as f:
            f.write("strict_roles = true\n" + config)
        seen["strict"] = await error(s, "spawn_agent", {"role": "IMPLEMNTER", "task": "typo", "command": raw})
        # A typo in the file: reads go on, spawns are refused with the file's error.
        with open("corral.toml", "w") as f:
            f.write(("strict_roles = true\n" + config).replace("max_concurrent = 50", "max_concurrent = 0"))
        seen["broken_list"] = await call(s, "list_agents", {})
        seen["broken_spawn"] = await error(s, "spawn_agent", {"role": "REVIEWER", "task": "t3"})
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
