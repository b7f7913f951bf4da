"""Shared by the MCP test scripts: a session with `corral mcp` through the official MCP Python
SDK client, and small helpers that turn tool results into plain values."""

import contextlib
import json
import os

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


@contextlib.asynccontextmanager
async def session(corral: str = "corral", cwd: str | None = None):
    """`corral mcp` as a stdio subprocess, with this process's whole environment (the SDK
    passes only a safe subset by default, which would drop PATH additions and CORRAL_*)."""
    params = StdioServerParameters(command=corral, args=["mcp"], env=dict(os.environ), cwd=cwd)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            yield s


def structured(result) -> dict:
    """The structured content of a successful call; raises with the tool's message otherwise."""
    if result.is_error:
        raise RuntimeError(f"tool error: {text(result)}")
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(text(result))


def text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def call(s: ClientSession, name: str, args: dict, **kw) -> dict:
    return structured(await s.call_tool(name, args, **kw))


async def error(s: ClientSession, name: str, args: dict) -> str:
    """The message of a call that must fail as a tool error (not a protocol error)."""
    result = await s.call_tool(name, args)
    if not result.is_error:
        raise RuntimeError(f"{name} {args!r} succeeded but should have failed: {text(result)}")
    return text(result)
