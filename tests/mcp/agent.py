"""An agent that reports through MCP: run as a role's command, it starts `corral mcp` as its
own MCP server (which inherits CORRAL_AGENT_ID and the status/handoff paths from the agent's
environment), reports progress, then hands off. Exits non-zero if any call fails."""

import asyncio
import os

from corral_client import call, session


async def main() -> None:
    async with session() as s:
        r = await call(
            s,
            "report_progress",
            {
                "status": "active",
                "progress": 0.6,
                "phase": "mcp-analysis",
                "milestone": "schemas-read",
                "findings": ["reported over MCP", {"key": "transport", "value": "stdio"}],
            },
        )
        assert r["agentId"] == os.environ["CORRAL_AGENT_ID"], r
        assert r["statusFile"] == os.environ["CORRAL_STATUS_FILE"], r
        h = await call(
            s,
            "submit_handoff",
            {
                "handoff": {
                    "status": "complete",
                    "deliverables": {"files": [], "findings": [{"key": "transport", "value": "stdio"}]},
                    "memoryCandidate": {"lesson": "agents can report over MCP"},
                }
            },
        )
        assert h["handoffFile"] == os.environ["CORRAL_HANDOFF_FILE"], h
        print("reported and handed off over MCP", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
