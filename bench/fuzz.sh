#!/usr/bin/env bash
# Fuzzing of corral's parsers: the cargo-fuzz targets in fuzz/ (status file,
# handoff, corral.toml, control-socket request lines, agent ids), built once, then each
# run for a given time, one after another. Prints per target: executions, seconds,
# corpus size, result.
#
#   bench/fuzz.sh [SECONDS] [TARGET...]    seconds per target: the argument, else
#                                          FUZZ_SECONDS, else 60; targets: all by default
#
#   FUZZ_JOBS=2          run two targets at once (default 1; the machine has 2 cores)
#   FUZZ_NICE=10         niceness of the build and the runs (default 10: benchmarks first)
#   FUZZ_WORK=DIR        grown corpora and logs (default: $TMPDIR/corral-fuzz); a later run
#                        goes on from there. The seed corpus fuzz/corpus/<target> is only read.
#   FUZZ_TIMEOUT=20      seconds one input may take before it counts as a hang
#   FUZZ_SANITIZER=none  or `address` (AddressSanitizer; see below)
#
# Exit status: 0 when no target crashed, 1 when one did; the input is written to
# fuzz/artifacts/<target>/. Replay it with `cargo fuzz run -s none TARGET FILE`, minimize
# it with `cargo fuzz tmin -s none TARGET FILE`.
#
# Stable Rust: cargo-fuzz's default build asks for `-Zsanitizer=address`, which a stable
# compiler refuses. With `-s none` it asks rustc for nothing unstable (the coverage
# instrumentation is -Cpasses=sancov-module and -Cllvm-args), so a stable toolchain builds
# and runs the targets as they are. libFuzzer still catches every panic and failed
# assertion, arithmetic overflow (debug assertions and overflow checks are on), aborts,
# hangs (FUZZ_TIMEOUT) and memory blow-ups (-rss_limit_mb, 2 GiB). What no sanitizer misses
# is memory errors in unsafe code, which the parsers (safe Rust) do not have; for that,
# FUZZ_SANITIZER=address builds with AddressSanitizer through RUSTC_BOOTSTRAP=1 (the
# stable toolchain ships the runtime), in its own target dir.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

all_targets=(status handoff config request agent_id report_merge adapter mcp_message)
seconds="${FUZZ_SECONDS:-60}"
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then seconds="$1"; shift; fi
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [[ -f "fuzz/fuzz_targets/$t.rs" ]] || { echo "usage: bench/fuzz.sh [SECONDS] [TARGET...]; targets: ${all_targets[*]}" >&2; exit 2; }
done
jobs="${FUZZ_JOBS:-1}"
nice_="${FUZZ_NICE:-10}"
work="${FUZZ_WORK:-${TMPDIR:-/tmp}/corral-fuzz}"
timeout_="${FUZZ_TIMEOUT:-20}"
sanitizer="${FUZZ_SANITIZER:-none}"

say() { printf '== %s\n' "$*" >&2; }
# Seconds since boot: durations that a step of the wall clock does not change.
uptime_s() { cut -d. -f1 /proc/uptime; }

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

triple="$(rustc -vV | sed -n 's/^host: //p')"
build=(cargo fuzz build -s "$sanitizer")
target_dir="$root/fuzz/target"
if [[ "$sanitizer" != none ]]; then
  target_dir="$root/fuzz/target/sanitizer-$sanitizer"
  build=(env RUSTC_BOOTSTRAP=1 "${build[@]}" --target-dir "$target_dir")
fi

mkdir -p "$work/logs"
say "building fuzz targets (${build[*]})"
if ! nice -n "$nice_" "${build[@]}" >"$work/logs/build.log" 2>&1; then
  tail -40 "$work/logs/build.log" >&2
  say "build failed (whole log: $work/logs/build.log)"
  exit 1
fi
bin_dir="$target_dir/$triple/release"

run_one() {
  local t="$1" log="$work/logs/$1.log" grown="$work/corpus/$1"
  mkdir -p "$grown" "fuzz/artifacts/$t"
  local dict=()
  [[ -f "fuzz/dict/$t.dict" ]] && dict=("-dict=fuzz/dict/$t.dict")
  local start end rc=0
  start=$(uptime_s)
  # The binary as built above (not `cargo fuzz run`, which would rebuild first if the tree
  # changed meanwhile). New inputs go to the first corpus dir; the seeds are only read.
  # The time limit is `timeout`'s (a relative timer) and not -max_total_time, which reads
  # the wall clock: the chaos suite steps that clock, which would end or stretch a run.
  # On the interrupt libFuzzer prints its final stats and exits; 124 is the normal end.
  nice -n "$nice_" timeout --signal=INT --kill-after=60 "$seconds" "$bin_dir/$t" \
    -artifact_prefix="fuzz/artifacts/$t/" -timeout="$timeout_" -print_final_stats=1 "${dict[@]}" \
    "$grown" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  end=$(uptime_s)
  local runs corp result artifact
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  [[ -n "$runs" ]] || runs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
  corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | sed 's/corp: //' || true)
  # slow-unit-* files are no failure: a step of the wall clock (the chaos suite makes them)
  # during an input is counted as time spent on it; replay one to see its real time.
  artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | sed 's/Test unit written to //' | grep -v '/slow-unit-' | tail -1 || true)
  if [[ ($rc -eq 0 || $rc -eq 124) && -z "$artifact" ]]; then
    result="no crash"
  else
    result="CRASH (exit $rc): ${artifact:-see $log}"
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$t" "${runs:-?}" "$((end - start))" "${corp:-?}" "$result" >"$work/logs/$t.result"
  say "$t: ${runs:-?} runs in $((end - start)) s, corpus ${corp:-?}, $result"
}

for t in "${targets[@]}"; do
  rm -f "$work/logs/$t.result"
  say "fuzzing $t for $seconds s"
  if [[ "$jobs" -gt 1 ]]; then
    while [[ $(jobs -rp | wc -l) -ge "$jobs" ]]; do wait -n || true; done
    run_one "$t" &
  else
    run_one "$t"
  fi
done
wait

crashed=0
printf '\n%-10s %12s %8s %14s  %s\n' target runs seconds corpus result
for t in "${targets[@]}"; do
  IFS=$'\t' read -r name runs secs corp result <"$work/logs/$t.result"
  printf '%-10s %12s %8s %14s  %s\n' "$name" "$runs" "$secs" "$corp" "$result"
  [[ "$result" == "no crash" ]] || crashed=1
done
echo "(runs: inputs executed; corpus: inputs/bytes in the final corpus; logs: $work/logs)"
exit "$crashed"
