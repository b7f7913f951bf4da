#!/usr/bin/env bash
# corral's performance targets, each beside its peer (pueue 4.0.4 or the seed's scripts),
# all in one run, results written to BENCHMARKS.md (raw samples to bench/results/latest.json).
# The targets, by the names --only takes:
#   spawn      spawn to agent running, 1,000 sequential spawns, status with 1,000 agents
#              (corral and pueue, and the seed's monitor script over the status files)
#   retry      crash to retry scheduled, with 1,000 agents supervised
#   aggregate  aggregating 1,000 handoffs of 10 findings each (and the seed's jq loop)
#   monitor    `corral monitor` with 1,000 agents reporting every second
#   mcp        `spawn_agent` round trip over `corral mcp` (bench/mcp_spawn.py)
#   memory     supervisor memory, idle and with 1,000 running agents (corral and pueued)
#   growth     100 to 10,000 agents: status --json, spawn latency, memory (and the seed's
#              monitor script)
#   worktree   worktree agents on a repository of 10,000 files: spawn to running against
#              `git worktree add` by hand, a plain spawn while ten worktrees are prepared
#              against idle, `corral merge` of 20 branches against a shell loop of
#              `git merge` + the verify command
#   parse      parsing throughput of the claude-code and codex adapters (MB/s), the
#              #[ignore]d test adapter::tests::parse_throughput in a release build; its
#              section is appended to the report
#
#   bench/run.sh                     full run (about 30 minutes, half of it the growth to
#                                    10,000 agents; plus building)
#   bench/run.sh --quick             reduced sizes, for iterating (also: BENCH_QUICK=1)
#   bench/run.sh --only spawn,retry  only the targets named (for iterating)
#   BENCH_OUT=FILE                   write the report there instead of BENCHMARKS.md
#
# Which corral: by default the working tree, built here in release mode;
# BENCH_REV=<commit> builds that commit instead (from `git archive`, under bench/.peers);
# CORRAL_BIN=<path> measures a binary as it is.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(realpath -m "${BENCH_OUT:-$root/BENCHMARKS.md}")"
cd "$root"

targets="spawn, retry, aggregate, monitor, mcp, memory, growth, worktree, parse"
quick=()
only=()
if [[ "${BENCH_QUICK:-0}" != 0 ]]; then quick=(--quick); fi
while (( $# )); do
  case "$1" in
    --quick) quick=(--quick) ;;
    --only) [[ $# -ge 2 ]] || { echo "--only needs a list of targets, e.g. --only spawn,retry ($targets)" >&2; exit 2; }; only=(--only "$2"); shift ;;
    *) echo "usage: bench/run.sh [--quick] [--only TARGET,...]  (targets: $targets)" >&2; exit 2 ;;
  esac
  shift
done
# Checked here too, so a misspelt name fails before minutes of building.
if (( ${#only[@]} )); then
  IFS=, read -ra wanted <<< "${only[1]}"
  for t in "${wanted[@]}"; do
    [[ ", $targets, " == *", ${t// /}, "* && -n "${t// /}" ]] || {
      echo "bench/run.sh: --only ${only[1]}: unknown target \`$t'; the targets are $targets (e.g. --only spawn,retry)" >&2
      exit 2
    }
  done
fi
# `parse` is a cargo test, not a harness target: taken out of the harness's list.
parse=1
if (( ${#only[@]} )); then
  parse=0
  rest=()
  for t in "${wanted[@]}"; do
    t="${t// /}"
    if [[ "$t" == parse ]]; then parse=1; else rest+=("$t"); fi
  done
  harness_list="$(IFS=,; echo "${rest[*]}")"
else
  harness_list=""
fi

say() { printf '== %s\n' "$*" >&2; }

# Peers and tools.
for tool in jq tmux; do
  if ! command -v "$tool" >/dev/null; then
    say "installing $tool"
    sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_="sudo"
    $sudo_ apt-get install -y "$tool" >/dev/null || { $sudo_ apt-get update >/dev/null && $sudo_ apt-get install -y "$tool" >/dev/null; }
  fi
done
python="${PYTHON:-python3}"
if ! "$python" -c 'import mcp' 2>/dev/null; then
  say "installing the MCP Python SDK (pip install mcp==2.3.0) for the mcp target's client"
  "$python" -m pip install --quiet --disable-pip-version-check "mcp==2.3.0" \
    || say "warning: could not install the mcp package; the mcp target's measurement will fail"
fi
peers="$root/bench/.peers"
if ! "$peers/bin/pueue" --version 2>/dev/null | grep -qx 'pueue 4.0.4'; then
  say "installing pueue 4.0.4 into bench/.peers"
  cargo install pueue --version 4.0.4 --locked --root "$peers"
fi

# The binaries under test, release mode.
if [[ -n "${CORRAL_BIN:-}" ]]; then
  corral="$(realpath "$CORRAL_BIN")"
  rev="binary $CORRAL_BIN"
elif [[ -n "${BENCH_REV:-}" ]]; then
  sha="$(git rev-parse --short "$BENCH_REV^{commit}")"
  src="$peers/corral-src-$sha"
  if [[ ! -f "$src/Cargo.toml" ]]; then
    mkdir -p "$src" && git archive "$sha" | tar -x -C "$src"
  fi
  say "building corral $sha (release)"
  cargo build --release --quiet --manifest-path "$src/Cargo.toml" --target-dir "$peers/corral-target"
  corral="$peers/corral-target/release/corral"
  rev="$sha"
else
  say "building corral (release)"
  cargo build --release --quiet
  corral="$root/target/release/corral"
  rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]]; then rev="$rev with uncommitted changes"; fi
fi
# Measure a private copy, so a rebuild of the tree during the run cannot swap binaries.
mkdir -p "$peers"
cp "$corral" "$peers/corral-under-test"
corral="$peers/corral-under-test"
say "building the harness (release)"
cargo build --release --quiet --manifest-path bench/harness/Cargo.toml

# The harness stops every supervisor it starts and kills every agent it leaves; this catches
# an interrupted run too. It runs in its own process group (setsid), so its children (the
# MCP client script, tmux's client) go with it.
harness_pid=""
cleanup() {
  [[ -n "$harness_pid" ]] || return 0
  kill -- "-$harness_pid" 2>/dev/null || kill "$harness_pid" 2>/dev/null || true
  wait "$harness_pid" 2>/dev/null || true
  local tmp="${TMPDIR:-/tmp}/corral-bench-$harness_pid"
  tmux -L "corral-bench-$harness_pid" kill-server 2>/dev/null || true
  rm -f "${TMUX_TMPDIR:-/tmp}/tmux-$(id -u)/corral-bench-$harness_pid"
  for ws in "$tmp"/*-corral; do
    [[ -f "$ws/corral.toml" ]] && (cd "$ws" && "$corral" daemon stop 2>/dev/null) || true
  done
  for d in "$tmp"/*-pueue; do
    [[ -f "$d/pueue.yml" ]] && "$peers/bin/pueue" -c "$d/pueue.yml" shutdown >/dev/null 2>&1 || true
  done
  local shm="/dev/shm/corral-bench-$harness_pid"
  for ws in "$shm"/*-corral; do
    [[ -f "$ws/corral.toml" ]] && (cd "$ws" && "$corral" daemon stop 2>/dev/null) || true
  done
  for d in "$tmp" "$shm"; do
    [[ -d "$d" ]] && bench/harness/target/release/corral-bench reap "$d" || true
  done
  rm -rf "$tmp" "$tmp"-markers-* "$shm" 2>/dev/null || true
}
trap 'cleanup; exit 130' INT TERM

# The command as it was given, for BENCHMARKS.md.
cmdline="bench/run.sh"
[[ -n "${CORRAL_BIN:-}" ]] && cmdline="CORRAL_BIN=$CORRAL_BIN $cmdline"
[[ -n "${BENCH_REV:-}" && -z "${CORRAL_BIN:-}" ]] && cmdline="BENCH_REV=$BENCH_REV $cmdline"
(( ${#quick[@]} )) && cmdline="$cmdline --quick"
(( ${#only[@]} )) && cmdline="$cmdline --only ${only[1]}"

# The adapters' parsing throughput, in MB/s: a section appended to the report.
parse_section() {
  local log
  log="$(mktemp)"
  say "measuring the adapters' parsing throughput (cargo test --release --lib parse_throughput)"
  cargo test --release --quiet --lib adapter::tests::parse_throughput -- --ignored --exact --nocapture 2>"$log" >/dev/null \
    || { cat "$log" >&2; rm -f "$log"; return 1; }
  {
    printf '\n## Adapter parsing throughput\n\n'
    printf 'Target: the shim parses what an agent CLI prints as fast as it can print it (50 agents at 200 events a second each are 10,000 lines a second). '
    printf 'The parser of each adapter is fed a stream of about 32 MiB, made of its recorded fixture (`tests/fixtures/adapters/claude-success.jsonl`, `codex-success.jsonl`) over and over, in 64 KiB reads as the shim gets them; best of 5, on one core, with\n\n'
    printf '```sh\nbench/run.sh --only parse\n# which runs: cargo test --release --lib adapter::tests::parse_throughput -- --ignored --exact --nocapture\n```\n\n'
    printf '| adapter | throughput | lines a second | stream | best of 5 |\n|---|---|---|---|---|\n'
    sed -n 's/^parse \([a-z-]*\): \([0-9.]*\) MB\/s (\([0-9]*\) lines, \([0-9.]*\) MB, best of 5: \([0-9.]*\) ms; \([0-9]*\) lines\/s)$/| \1 | \2 MB\/s | \6 | \3 lines, \4 MB | \5 ms |/p' "$log"
    printf '\nLoad average (1, 5, 15 min) after: %s.\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
  } >>"$out"
  rm -f "$log"
}

if (( ${#only[@]} )) && [[ -z "$harness_list" ]]; then
  # Only `parse`: a report of that section alone.
  printf '# Benchmarks (bench/run.sh %s)\n\n%s, corral %s\n' "${quick[*]} ${only[*]}" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$rev" >"$out"
  parse_section
  exit $?
fi
(( ${#only[@]} )) && only=(--only "$harness_list")

say "measuring (corral, pueue, the seed's scripts)"
setsid --wait bench/harness/target/release/corral-bench run \
  --corral "$corral" \
  --pueue "$peers/bin/pueue" \
  --pueued "$peers/bin/pueued" \
  --monitor tests/fixtures/seed/monitor-agents.sh \
  --aggregate-script bench/seed/aggregate-handoffs.sh \
  --mcp-script bench/mcp_spawn.py \
  --python "$python" \
  --out "$out" \
  --results bench/results \
  --command-line "$cmdline" \
  --corral-rev "$rev" \
  "${quick[@]}" "${only[@]}" &
harness_pid=$!
status=0
wait "$harness_pid" || status=$?
harness_pid=""
if (( status == 0 && parse )); then parse_section || status=$?; fi
exit "$status"
