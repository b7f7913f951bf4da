"""`spawn_agent` with an admission group, a priority and a delay, and bad values of each as
tool errors. Writes what it saw, as JSON, to the file named by its first argument."""

import asyncio
import json
import sys

from corral_client import call, error, session


async def main(out: str) -> None:
    seen: dict = {"errors": {}}
    e = seen["errors"]
    async with session() as s:
        seen["spawn"] = await call(
            s, "spawn_agent", {"role": "WORKER", "task": "later", "group": "review", "priority": 7, "delay": "1h"}
        )
        e["priority_range"] = await error(s, "spawn_agent", {"role": "WORKER", "task": "t", "priority": 5000})
        e["bad_group"] = await error(s, "spawn_agent", {"role": "WORKER", "task": "t", "group": "a/b"})
        e["bad_delay"] = await error(s, "spawn_agent", {"role": "WORKER", "task": "t", "delay": "soon"})
        seen["health"] = await call(s, "health", {})
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
