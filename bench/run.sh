#!/usr/bin/env bash
# The benchmark of issue 2: corral beside pueue 4.0.4, every measurement for both in one
# run, results written to BENCHMARKS.md (raw samples to bench/results/latest.json).
#
#   bench/run.sh            full run (a few minutes)
#   bench/run.sh --quick    reduced sizes, for iterating (also: BENCH_QUICK=1)
#
# Which corral: by default the working tree, built here in release mode;
# BENCH_REV=<commit> builds that commit instead (from `git archive`, under bench/.peers);
# CORRAL_BIN=<path> measures a binary as it is.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

quick=()
if [[ "${BENCH_QUICK:-0}" != 0 ]]; then quick=(--quick); fi
for a in "$@"; do
  case "$a" in
    --quick) quick=(--quick) ;;
    *) echo "usage: bench/run.sh [--quick]" >&2; exit 2 ;;
  esac
done

say() { printf '== %s\n' "$*" >&2; }

# Peers and tools.
if ! command -v jq >/dev/null; then
  say "installing jq"
  sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_="sudo"
  $sudo_ apt-get install -y jq >/dev/null || { $sudo_ apt-get update >/dev/null && $sudo_ apt-get install -y jq >/dev/null; }
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

# The harness stops every supervisor it starts; this catches an interrupted run too.
harness_pid=""
cleanup() {
  [[ -n "$harness_pid" ]] || return 0
  kill "$harness_pid" 2>/dev/null || true
  wait "$harness_pid" 2>/dev/null || true
  local tmp="${TMPDIR:-/tmp}/corral-bench-$harness_pid"
  for ws in "$tmp"/*-corral; do
    [[ -f "$ws/corral.toml" ]] && (cd "$ws" && "$corral" daemon stop 2>/dev/null) || true
  done
  for d in "$tmp"/*-pueue; do
    [[ -f "$d/pueue.yml" ]] && "$peers/bin/pueue" -c "$d/pueue.yml" shutdown >/dev/null 2>&1 || true
  done
  rm -rf "$tmp" "$tmp"-markers-* 2>/dev/null || true
}
trap 'cleanup; exit 130' INT TERM

# The command as it was given, for BENCHMARKS.md.
cmdline="bench/run.sh"
[[ -n "${CORRAL_BIN:-}" ]] && cmdline="CORRAL_BIN=$CORRAL_BIN $cmdline"
[[ -n "${BENCH_REV:-}" && -z "${CORRAL_BIN:-}" ]] && cmdline="BENCH_REV=$BENCH_REV $cmdline"
(( ${#quick[@]} )) && cmdline="$cmdline --quick"

say "measuring (corral and pueue)"
bench/harness/target/release/corral-bench run \
  --corral "$corral" \
  --pueue "$peers/bin/pueue" \
  --pueued "$peers/bin/pueued" \
  --monitor bench/seed/monitor-agents.sh \
  --out BENCHMARKS.md \
  --results bench/results \
  --command-line "$cmdline" \
  --corral-rev "$rev" \
  "${quick[@]}" &
harness_pid=$!
status=0
wait "$harness_pid" || status=$?
harness_pid=""
exit "$status"
