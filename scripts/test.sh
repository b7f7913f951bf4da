#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need beyond cargo,
# then runs every test. Used by CI (.ci/run) and by people alike.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (Debian packages)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The MCP memory server (npm) and the official MCP Python SDK: the tests read corral's
# memory export through them.
deps=target/test-deps
server="$deps/node_modules/@modelcontextprotocol/server-memory/dist/index.js"
if [ ! -f "$server" ]; then
  echo "installing @modelcontextprotocol/server-memory (npm) into $deps" >&2
  mkdir -p "$deps"
  (cd "$deps" && npm install --silent --no-audit --no-fund @modelcontextprotocol/server-memory@2026.8.31 >/dev/null)
fi
if ! python3 -c "import mcp" 2>/dev/null; then
  echo "installing the MCP Python SDK (pip install mcp)" >&2
  python3 -m pip install --quiet --disable-pip-version-check "mcp==2.3.0"
fi

cargo build --quiet
cargo test --quiet "$@"
