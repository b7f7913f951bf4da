#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need beyond cargo,
# then runs every test. Used by CI (.ci/run) and by people alike.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
# rsvg-convert renders `corral timeline`'s SVG to PNG (tests/timeline.rs checks its pixels).
command -v rsvg-convert >/dev/null 2>&1 || need_apt+=(librsvg2-bin)
# PostgreSQL for cluster mode's store (tests/cluster.rs starts throw-away servers).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
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
# The real agent CLIs, pinned (their native binaries come inside the packages, so nothing is
# downloaded at run time): tests/clis.rs runs them against a fake model server on 127.0.0.1.
# Optional dependencies and install scripts are needed (the binaries are optional
# dependencies; claude's postinstall links its binary); about 12 s and 800 MB, once.
clis="@anthropic-ai/claude-code@2.1.328 @openai/codex@0.169.0"
if ! "$deps/node_modules/.bin/claude" --version 2>/dev/null | grep -q '^2\.1\.328 ' \
  || ! "$deps/node_modules/.bin/codex" --version 2>/dev/null | grep -q ' 0\.169\.0$'; then
  echo "installing $clis (npm) into $deps" >&2
  mkdir -p "$deps"
  start=$(date +%s)
  # shellcheck disable=SC2086
  (cd "$deps" && npm install --silent --no-audit --no-fund $clis >/dev/null)
  # npm may hold back install scripts it has not been told to allow: link claude's binary.
  "$deps/node_modules/.bin/claude" --version >/dev/null 2>&1 \
    || node "$deps/node_modules/@anthropic-ai/claude-code/install.cjs" >/dev/null
  echo "installed the agent CLIs in $(( $(date +%s) - start ))s" >&2
fi
if ! python3 -c "import mcp" 2>/dev/null; then
  echo "installing the MCP Python SDK (pip install mcp)" >&2
  python3 -m pip install --quiet --disable-pip-version-check "mcp==2.3.0"
fi

cargo build --quiet
cargo test --quiet "$@"
