"""A raw `command` argv through `spawn_agent` in a workspace that allows raw commands. Writes
the spawn result and the error for a role with no template, as JSON, to the file named by
its first argument."""

import asyncio
import json
import sys

from corral_client import call, error, session


async def main(out: str) -> None:
    async with session() as s:
        seen = {
            "spawn": await call(
                s, "spawn_agent", {"role": "SCRIPT", "task": "exit cleanly", "command": ["sh", "-c", "exit 0", "raw"]}
            ),
            "no_template": await error(s, "spawn_agent", {"role": "SCRIPT", "task": "no command given"}),
        }
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
