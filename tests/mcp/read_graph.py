"""Reads a knowledge graph through the real MCP memory server with the official MCP Python
SDK client: starts `node <server>` with MEMORY_FILE_PATH=<file>, calls `read_graph`, and
prints the graph as JSON on stdout."""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main(server: str, memory_file: str) -> None:
    params = StdioServerParameters(
        command="node",
        args=[server],
        env={**os.environ, "MEMORY_FILE_PATH": memory_file},
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            names = [t.name for t in tools.tools]
            if "read_graph" not in names:
                raise SystemExit(f"server has no read_graph tool: {names}")
            result = await session.call_tool("read_graph", {})
            # The SDK's field names changed case between major versions.
            if getattr(result, "is_error", None) or getattr(result, "isError", None):
                raise SystemExit(f"read_graph failed: {result.content}")
            graph = getattr(result, "structured_content", None) or getattr(result, "structuredContent", None)
            if graph is None:
                graph = json.loads(result.content[0].text)
            print(json.dumps(graph))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
