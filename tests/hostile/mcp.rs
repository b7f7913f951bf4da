//! Hostile scenarios: mcp.
