#!/usr/bin/env bash
# The chaos suite: the supervision guarantees under abuse, the real corral binary
# (release) against real processes. Scenarios (tests/chaos.rs, `#[ignore]`d there, run here
# one at a time):
#   kill9          kill -9 of the supervisor 12 times at random moments while 100 agents
#                  start, report, crash with 'rate limit' and are retried, or exit with a
#                  known code
#   disk_full      the data dir on an 8 MiB tmpfs that agents fill with logs and status files
#   status_storm   status files rewritten hundreds of times a second per agent, `corral
#                  status --json` in a loop, `corral monitor` in tmux
#   fifty_clis     50 CLIs of mixed kinds at once, racing to start the supervisor
#   wall_clock     +1h and -1h steps of the wall clock against 2s timeouts (restored after)
#   kill9_shims    kill -9 of a random shim ten times while 50 agents run and print
#   kill9_all      kill -9 of the supervisor, its launcher and every shim at once while 50
#                  agents run (codes of attempts that ran through it are unknowable, said so)
# then, if bench/fuzz.sh exists, a fuzz smoke of about 30 s over its targets.
#
#   bench/chaos.sh                  everything (about 2 minutes plus building)
#   bench/chaos.sh kill9 disk_full  only the scenarios named
#   CHAOS_SEED=N                    replay the random kill moments and agent durations
#   CHAOS_FUZZ_SECONDS=30           total fuzz time (0: no fuzzing)
#
# Each scenario prints `CHAOS <scenario> key=value ...`; the table below collects them.
# Every loss figure must be 0; the exit status is 1 when a scenario failed.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { printf '== %s\n' "$*" >&2; }

declare -A test_of=(
  [kill9]=chaos_kill9_supervisor
  [disk_full]=chaos_disk_full
  [status_storm]=chaos_status_storm
  [fifty_clis]=chaos_fifty_clis
  [wall_clock]=chaos_wall_clock_steps
  [kill9_shims]=chaos_kill9_shims
  [kill9_all]=chaos_kill9_everything
)
order=(kill9 disk_full status_storm fifty_clis wall_clock kill9_shims kill9_all)
scenarios=("$@")
[[ ${#scenarios[@]} -eq 0 ]] && scenarios=("${order[@]}")
for s in "${scenarios[@]}"; do
  [[ -n "${test_of[$s]:-}" ]] || { echo "usage: bench/chaos.sh [${order[*]}]" >&2; exit 2; }
done

for tool in tmux jq; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    say "installing $tool"
    SUDO=""; [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$tool" >/dev/null
  fi
done

# Safety nets for what the scenarios change on the machine: the wall clock (wall_clock
# restores it itself; if the run is killed half way, this puts it back from CLOCK_BOOTTIME)
# and the tmpfs of disk_full.
wall_minus_boot() { awk -v now="$(date +%s.%N)" '{ printf "%.3f", now - $1 }' /proc/uptime; }
offset="$(wall_minus_boot)"
cleanup() {
  local drift
  drift="$(awk -v a="$(wall_minus_boot)" -v b="$offset" 'BEGIN { d = a - b; if (d < 0) d = -d; print (d > 2) }')"
  if [[ "$drift" == 1 ]]; then
    say "the wall clock is off after the run; putting it back"
    date -s "@$(awk -v b="$offset" '{ printf "%.3f", $1 + b }' /proc/uptime)" >/dev/null
  fi
  for m in $(awk '$2 ~ /corral-chaos-disk-/ { print $2 }' /proc/mounts); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}
trap cleanup EXIT

say "building (release)"
build_start=$SECONDS
cargo build --release --quiet && cargo test --release --test chaos --no-run --quiet 2>/dev/null \
  || { say "build failed"; cargo test --release --test chaos --no-run; exit 1; }
say "built in $((SECONDS - build_start))s"

log="$(mktemp -t corral-chaos.XXXXXX)"
rc=0
declare -A result
run_start=$SECONDS
for s in "${scenarios[@]}"; do
  say "scenario $s"
  cargo test --release --quiet --test chaos "${test_of[$s]}" -- --exact --ignored --nocapture --test-threads=1 \
    2>&1 | tee -a "$log"
  if [[ ${PIPESTATUS[0]} -eq 0 ]]; then result[$s]=PASS; else result[$s]=FAIL; rc=1; fi
done
chaos_secs=$((SECONDS - run_start))

# The table: the loss figures every scenario shares, then each scenario's own.
common=(agents_lost exit_codes_lost double_starts supervisor_crashes orphans)
printf '\n%-13s %-8s' scenario result
for k in "${common[@]}"; do printf ' %-10s' "${k%%_*}"; done
printf ' %s\n' "other figures that must be 0 but are not"
for s in "${scenarios[@]}"; do
  line="$(grep -E "^CHAOS $s( |$)" "$log" | tail -1)"
  r="${result[$s]}"
  [[ "$line" == *" skipped="* ]] && r=SKIPPED
  printf '%-13s %-8s' "$s" "$r"
  for k in "${common[@]}"; do
    v="$(sed -n "s/.* $k=\([^ ]*\).*/\1/p" <<<"$line")"
    printf ' %-10s' "${v:--}"
  done
  # The scenario's own failure line: "<scenario>: a=1, b=2 must be 0".
  bad="$(sed -n "s/^$s: \(.*\) must be 0$/\1/p" "$log" | tail -1)"
  for k in "${common[@]}"; do bad="$(sed -E "s/(^|, )$k=[0-9]+//" <<<"$bad")"; done
  bad="$(sed -E 's/^, //' <<<"$bad")"
  [[ "$r" == FAIL && -z "$bad" && -z "$line" ]] && bad="stopped before its figures (see the log above)"
  printf ' %s\n' "${bad:--}"
done
printf '(columns: agents lost, exit codes lost, double starts, supervisor crashes, orphans; - where a scenario does not measure it)\n' 
printf '\nall figures:\n'
for s in "${scenarios[@]}"; do
  line="$(grep -E "^CHAOS $s( |$)" "$log" | tail -1)"
  printf '  %s:\n' "$s"
  if [[ -z "$line" ]]; then printf '    (no figures: the scenario stopped before printing them)\n'; continue; fi
  tr ' ' '\n' <<<"${line#CHAOS $s }" | sed 's/^/    /'
done
grep -E "SKIPPED" "$log" | sed 's/^/  /' || true
printf '\nchaos scenarios took %ss\n' "$chaos_secs"

total="${CHAOS_FUZZ_SECONDS:-30}"
if [[ -x bench/fuzz.sh && "$total" -gt 0 && $# -eq 0 ]]; then
  n="$(ls fuzz/fuzz_targets/*.rs 2>/dev/null | wc -l)"
  per=$(( total / (n > 0 ? n : 1) )); (( per < 1 )) && per=1
  say "fuzz smoke: ${per}s for each of $n targets"
  FUZZ_SECONDS="$per" bench/fuzz.sh || rc=1
elif [[ ! -e bench/fuzz.sh ]]; then
  say "no bench/fuzz.sh: no fuzz smoke"
fi
rm -f "$log"
exit "$rc"
