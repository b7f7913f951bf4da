//! BENCHMARKS.md, the targets beyond spawn and status (retry, aggregate, monitor, mcp,
//! memory, growth, worktree): their rows of the summary and their sections.

use crate::growth::{At, Size};
use crate::measure::{REPORTING_AGENT, Results};
use crate::memory::Memory;
use crate::monitor::Live;
use crate::population::SETUP_THREADS;
use crate::report::{HEAD, f, row, verdict};
use crate::retry::CRASHER;
use crate::stats::summarize;
use crate::target::Target;
use std::fmt::Write;

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn opt_mib(kb: Option<u64>) -> String {
    kb.map(mib).unwrap_or_else(|| "n/a".into())
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

/// What a cell says when its measurement did not run or failed.
fn absent(r: &Results, target: Target) -> String {
    if r.ran.contains(&target) { "failed".into() } else { "not run".into() }
}

/// The monitor's figures that are judged: redraws per second and CPU share of one core over
/// its whole run (startup included), from its own `--stats`.
fn live_judged(l: &Live) -> (f64, f64) {
    let secs = l.seconds.max(1) as f64;
    (l.frames as f64 / secs, l.monitor_cpu_s / secs)
}

pub fn summary_rows(o: &mut String, r: &Results) {
    let full = !r.args.quick;
    let p = &r.sizes;
    // Crash to retry.
    let c = r.crash.as_ref().and_then(|c| summarize(&c.latency));
    let _ = writeln!(
        o,
        "| retry: crash to retry scheduled, p50 / p99, {} crashes with {} agents supervised | {} | pueue: never retries; the seed: next poll, every 30-60 s | p99 <= 50 ms | {} |",
        p.crashers,
        p.crash_long,
        c.as_ref()
            .map(|s| {
                let mut cell = format!("{} / {}", f(s.median), f(s.p99));
                if let Some(x) = r.crash.as_ref().filter(|x| !x.not_retried.is_empty()) {
                    let _ = write!(
                        cell,
                        "; **{} of {} not retried** (see the crash to retry section)",
                        x.not_retried.len(),
                        x.crashers
                    );
                }
                cell
            })
            .unwrap_or_else(|| absent(r, Target::Retry)),
        verdict(c.as_ref().filter(|_| full).map(|s| s.p99 <= 50.0))
    );
    // Aggregation.
    let a = r.aggregation.as_ref();
    let am = a.and_then(|a| summarize(&a.runs));
    let seed = a.and_then(|a| a.seed).map(|(n, done, ms)| {
        if done == n {
            format!("the seed's jq loop: {} ({n} handoffs)", f(ms))
        } else {
            format!("the seed's jq loop: stopped after {} with {done} of {n} handoffs done", f(ms))
        }
    });
    let _ = writeln!(
        o,
        "| aggregate: `corral aggregate --json`, {} handoffs x 10 findings, median of {} | {} | {} | <= 1 s | {} |",
        p.handoffs,
        p.aggregate_runs,
        am.as_ref().map(|s| f(s.median)).unwrap_or_else(|| absent(r, Target::Aggregate)),
        seed.unwrap_or_else(|| absent(r, Target::Aggregate)),
        verdict(am.as_ref().map(|s| s.median <= 1000.0))
    );
    // The monitor under load.
    let l = r.live.as_ref();
    let monitor_row = r.monitor.iter().max_by_key(|m| m.files);
    let seed_monitor = monitor_row
        .map(|m| {
            if m.complete() {
                format!("the seed's monitor-agents.sh: one pass over {} files takes {}", m.files, f(m.ms))
            } else {
                format!(
                    "the seed's monitor-agents.sh: one pass over {} files takes about {} (extrapolated; stopped after {})",
                    m.files,
                    f(m.per_file_ms() * m.files as f64),
                    f(m.ms)
                )
            }
        })
        .unwrap_or_else(|| "the seed's monitor-agents.sh: see the status section".into());
    let _ = writeln!(
        o,
        "| monitor: `corral monitor` with {} agents reporting every second: redraws per second; CPU, % of one core | {} | {} | >= 5 per second, < 10 % | {} |",
        p.live_agents,
        l.map(|l| {
            let (fps, cpu) = live_judged(l);
            let mut cell = format!("{fps:.2} per second; {}", pct(cpu));
            if let Some(d) = &r.live_disk {
                let (dfps, dcpu) = live_judged(d);
                let _ = write!(cell, " (workspace on tmpfs; on {}: {dfps:.2} per second; {})", d.fs, pct(dcpu));
            }
            cell
        })
        .unwrap_or_else(|| absent(r, Target::Monitor)),
        seed_monitor,
        verdict(l.filter(|_| full).map(|l| {
            let (fps, cpu) = live_judged(l);
            fps >= 5.0 && cpu < 0.10
        }))
    );
    // MCP.
    let m = r.mcp.as_ref();
    let _ = writeln!(
        o,
        "| mcp: `spawn_agent` round trip over stdio (`corral mcp`), median (p99), {} calls | {} | none: neither pueue nor the seed has an MCP server | median <= 10 ms | {} |",
        p.mcp_calls,
        m.map(|m| format!("{} (p99 {})", f(m.median), f(m.p99))).unwrap_or_else(|| absent(r, Target::Mcp)),
        verdict(m.map(|m| m.median <= 10.0))
    );
    // Memory.
    let mem = &r.memory;
    let corral_mem = match (mem.idle_kb, mem.running_kb) {
        (Some(i), Some(run)) => format!(
            "{} idle, {} with {} running; {} per agent with its shim",
            mib(i),
            mib(run),
            mem.running,
            per_agent(mem).map(kib).unwrap_or_default()
        ),
        _ => absent(r, Target::Memory),
    };
    let pueue_mem = match (mem.pueued_before_running_kb, mem.pueued_running_kb) {
        (Some(i), Some(run)) => format!(
            "pueued: {} idle, {} with {} running; {} per task",
            mib(i),
            mib(run),
            mem.pueued_running,
            kib((run as f64 - i as f64) / mem.pueued_running.max(1) as f64)
        ),
        _ => "pueued: not measured".into(),
    };
    let _ = writeln!(
        o,
        "| memory: supervisor memory (RSS), idle and with running agents | {corral_mem} | {pueue_mem} | none stated (recorded) | not judged |"
    );
    growth_summary(o, r);
    worktree_summary(o, r);
}

fn worktree_summary(o: &mut String, r: &Results) {
    let w = r.worktrees.as_ref();
    let med = |v: &[f64]| summarize(v).map(|s| f(s.median)).unwrap_or_else(|| "n/a".into());
    let full = !r.args.quick;
    let _ = writeln!(
        o,
        "| worktree: spawn to running of a worktree agent, repository of {} files, median of {} | {} | `git worktree add` by hand: {} | overhead <= 20 % | {} |",
        w.map_or(10_000, |w| w.files),
        w.map_or(0, |w| w.corral_add.len()),
        w.map(|w| format!(
            "{} ({} over git)",
            med(&w.corral_add),
            w.overhead().map(|x| format!("{:+.0} %", x * 100.0)).unwrap_or_default()
        ))
        .unwrap_or_else(|| absent(r, Target::Worktree)),
        w.map(|w| med(&w.git_add)).unwrap_or_else(|| absent(r, Target::Worktree)),
        verdict(w.and_then(|w| w.overhead()).filter(|_| full).map(|x| x <= 0.20))
    );
    let _ = writeln!(
        o,
        "| worktree: spawn to running of a plain agent while ten worktrees are prepared, median | {} | the same, idle: {} | <= 2x idle | {} |",
        w.map(|w| format!("{} ({:.2}x, n = {})", med(&w.busy), w.busy_ratio().unwrap_or(f64::NAN), w.busy.len()))
            .unwrap_or_else(|| absent(r, Target::Worktree)),
        w.map(|w| format!("{} (n = {})", med(&w.idle), w.idle.len())).unwrap_or_else(|| absent(r, Target::Worktree)),
        verdict(w.and_then(|w| w.busy_ratio()).map(|x| x <= 2.0))
    );
    let _ = writeln!(
        o,
        "| worktree: `corral merge` of {} branches with verify after each, median of {} | {} | a shell loop of `git merge` + verify: {} | none stated (recorded) | not judged |",
        w.map_or(20, |w| w.branches),
        w.map_or(0, |w| w.corral_merge.len()),
        w.map(|w| med(&w.corral_merge)).unwrap_or_else(|| absent(r, Target::Worktree)),
        w.map(|w| med(&w.shell_merge)).unwrap_or_else(|| absent(r, Target::Worktree)),
    );
}

fn worktrees(o: &mut String, r: &Results) {
    let _ = writeln!(
        o,
        "## Worktrees
"
    );
    let _ = writeln!(
        o,
        "Targets: making an agent's worktree costs at most 20 % over making it with `git worktree add` by hand; a plain \
spawn while ten worktrees are being prepared takes at most twice as long as on an idle supervisor (the loop is not \
blocked); `corral merge` is recorded beside a shell loop of `git merge` and the verify command.\n"
    );
    let Some(w) = &r.worktrees else { return not_measured(o, r, Target::Worktree) };
    let _ = writeln!(
        o,
        "One git repository of {} files (100 directories, one commit). Worktree creation: one at a time, alternated (which \
goes first alternates too), each after `sync` and a pause of 0.5 s so that neither pays for the other's 10,000 files \
still being written back, and none removed until all are made (a removal of 10,000 files slowed the next worktree by \
seconds here): a `git worktree add -b BRANCH DIR HEAD` by hand, timed around the git process, and a \
`corral spawn` of an agent with `isolation = \"worktree\"` whose command is the probe (`corral-bench stamp FILE`), \
timed from before the spawn to the probe's first instruction: the CLI, the supervisor, the worktree worker's \
`git worktree add` (and the rest of its preparation), and the start of the agent. Plain spawns: the probe with \
`isolation = \"none\"`, one at a time after a random pause of 0-100 ms, first with nothing else going on, then \
right after ten worktree agents were spawned; a probe counts as made while worktrees were prepared if, once it ran, \
one of the ten was still without its worktree. Merges: {} agents each commit a file of their own on their branch; \
`corral merge --into NEW ID...` (its own worktree, a `--no-ff` merge and the role's verify `{}` after each, then the \
worktree removed), against `sh -c` doing the same by hand (`git worktree add`, then per branch \
`git merge --no-ff --no-edit` and the verify, then `git worktree remove`), alternated.\n",
        w.files,
        w.branches,
        crate::worktree::VERIFY
    );
    let _ = write!(o, "{HEAD}");
    row(o, "corral: spawn to running, worktree agent", summarize(&w.corral_add));
    row(o, "git worktree add by hand", summarize(&w.git_add));
    row(o, "corral: spawn to running, plain agent, idle", summarize(&w.idle));
    row(o, "corral: spawn to running, plain agent, while worktrees are prepared", summarize(&w.busy));
    row(o, &format!("corral merge of {} branches", w.branches), summarize(&w.corral_merge));
    row(o, &format!("shell loop: git merge + verify, {} branches", w.branches), summarize(&w.shell_merge));
    o.push('\n');
}

fn kib(k: f64) -> String {
    format!("{k:.0} KiB")
}

/// corral's cost of one running agent: the supervisor's growth per agent plus the PSS of
/// one helper process (the per-attempt shim; the launcher is one process for all).
fn per_agent(m: &Memory) -> Option<f64> {
    let (idle, run) = (m.idle_kb?, m.running_kb?);
    if m.running == 0 {
        return None;
    }
    Some((run as f64 - idle as f64) / m.running as f64 + m.helpers_pss_kb as f64 / m.running as f64)
}

pub fn sections(o: &mut String, r: &Results) {
    crash(o, r);
    aggregation(o, r);
    live(o, r);
    mcp(o, r);
    memory(o, r);
    growth(o, r);
    worktrees(o, r);
}

fn not_measured(o: &mut String, r: &Results, target: Target) {
    let _ = writeln!(
        o,
        "{}\n",
        if r.ran.contains(&target) {
            "The measurement failed; the error is listed under the summary."
        } else {
            "Not run in this run (`--only`)."
        }
    );
}

fn crash(o: &mut String, r: &Results) {
    let _ = writeln!(o, "## Crash to retry scheduled\n");
    let _ = writeln!(
        o,
        "Target: a p99 of at most 50 ms from an agent's crash to the supervisor's decision to retry it, with 1,000 agents \
supervised. Peers: pueue (which never retries) and the seed's orchestrator (which polls).\n"
    );
    let Some(c) = &r.crash else { return not_measured(o, r, Target::Retry) };
    let _ = writeln!(
        o,
        "A workspace whose `corral.toml` is\n\n```toml\n{}```\n\n(no admission limit in the way, no circuit breaker, one retry after 10 minutes, so no \
scheduled retry runs during the measurement). First {} agents running `sleep 600` ({} `corral spawn`s at a time; \
{:.1} s), then {} agents spawned one after the other, each running\n\n```sh\nsh -c \"{}\"\n```\n\nwith the binary under \
test first on its PATH: it reports a transient failure and exits 1, and corral classifies it as a crash to retry. For \
each of them the figure is, from `corral events`, the `at` of its `retry_scheduled` event minus the `data.endedAt` of \
its `exited` event: from the per-attempt shim's record of the process's end (stamped as it writes the exit record, \
right after reaping the process and finding its group empty) to the supervisor recording the retry decision (stamped \
just before the commit that persists it). Both stamps are whole milliseconds, so each sample is \
good to +-1 ms.\n",
        CRASH_TOML, c.long_agents, SETUP_THREADS, c.setup_s, c.crashers, CRASHER,
    );
    o.push_str(HEAD);
    row(
        o,
        &format!("crash to retry scheduled ({} agents supervised)", c.long_agents + c.crashers),
        summarize(&c.latency),
    );
    row(o, "`corral spawn` of each crasher", summarize(&c.spawn_ms));
    o.push('\n');
    if !c.unmatched.is_empty() {
        let _ = writeln!(o, "Agents without both events: {}\n", c.unmatched.join(", "));
    }
    if !c.not_retried.is_empty() {
        let _ = writeln!(
            o,
            "**{} of the {} crashers {} not retried** (and {} not in the figures above), although each reported \
the same transient finding before exiting:\n",
            c.not_retried.len(),
            c.crashers,
            if c.not_retried.len() == 1 { "was" } else { "were" },
            if c.not_retried.len() == 1 { "is" } else { "are" },
        );
        for (id, status, reason) in c.not_retried.iter().take(10) {
            let _ = writeln!(o, "- {id}: {status}: {reason}");
        }
        if c.not_retried.len() > 10 {
            let _ = writeln!(o, "- ... and {} more", c.not_retried.len() - 10);
        }
        let _ = writeln!(
            o,
            "\nThe reason carries no \"last finding\": the supervisor did not count their status write as a report of \
this attempt, so the rate-limit finding was not classified. An agent that reports within a few milliseconds of its \
start is judged by its status file's mtime, which the kernel stamps from a clock that lags by up to a tick, against \
the attempt's start time; when the mtime reads earlier, the report is dropped.\n"
        );
    }
    let _ = writeln!(
        o,
        "The peers: pueue never retries a failed task (it stays failed until someone runs `pueue restart`), so it has \
no such figure. The seed's orchestrator learns of a crash on its next poll of the status files, every 30-60 s, and only \
then starts its backoff; from crash to retry decision it takes 0-60 s.\n"
    );
}

const CRASH_TOML: &str = "[health]\nmax_concurrent = 5000\nbreaker_failures = 0\n\n[defaults]\nmax_retries = 1\nbackoff = { initial = \"10m\" }\n";

fn aggregation(o: &mut String, r: &Results) {
    let _ = writeln!(o, "## Aggregating {} handoffs\n", r.sizes.handoffs);
    let _ = writeln!(
        o,
        "Target: `corral aggregate --json` over 1,000 handoffs of 10 findings each in at most 1 s. Peer: the seed's jq loop \
over the same files.\n"
    );
    let Some(a) = &r.aggregation else { return not_measured(o, r, Target::Aggregate) };
    let _ = writeln!(
        o,
        "{n} handoff files written straight into the data dir of a fresh workspace (`handoffs/handoff-<UTC timestamp>-agent-NNN-IMPLEMENTER-to-ORCHESTRATOR.json`, \
{kb:.0} KiB in all), from agents corral never ran, which it aggregates all the same (as unknown agents). Each holds \
{k} findings: 5 strings (2 drawn from a pool of 40 shared notes, so many repeat across agents) and 5 structured \
findings `{{key, value, claim, evidence}}` on 750 keys (150 components x 5 aspects, each key claimed by 6 or 7 agents; \
about 70% of the claims agree on the value, the rest differ), with evidence of every kind or none; plus two decisions \
and a memory candidate. The same files on every run (a seeded generator). `corral aggregate --json --out FILE` is run \
once to warm up (the supervisor is already running), then {runs} times, each timed as a whole process.\n",
        n = a.handoffs,
        kb = a.handoff_bytes as f64 / 1024.0,
        k = a.findings_each,
        runs = a.runs.len()
    );
    o.push_str(HEAD);
    row(o, &format!("corral aggregate --json --out FILE, {} handoffs", a.handoffs), summarize(&a.runs));
    o.push('\n');
    let n = |k: &str| a.counts[k].as_u64().map(|x| x.to_string()).unwrap_or_else(|| "?".into());
    let _ = writeln!(
        o,
        "The report ({} KiB of JSON): {} of {} handoffs aggregated, {} merged findings, {} decisions, {} conflicts ({} \
resolved by evidence, {} by majority, {} unresolved and sent to the escalation queue), {} memory candidates, {} TODO \
entries; exit code {} (1: the report is partial, here because of the unresolved conflicts).\n",
        a.report_bytes / 1024,
        n("aggregated"),
        a.handoffs,
        n("findings"),
        n("decisions"),
        n("conflicts"),
        n("resolvedByEvidence"),
        n("resolvedByMajority"),
        n("unresolved"),
        n("memory"),
        n("todo"),
        a.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "?".into())
    );
    if let Some((files, done, ms)) = a.seed {
        let took = if done == files {
            format!("{} ({} per handoff)", f(ms), f(ms / files.max(1) as f64))
        } else {
            format!(
                "stopped at the harness's cap after {} with {done} handoffs done ({} per handoff; all {files} would \
take about {})",
                f(ms),
                f(ms / done.max(1) as f64),
                f(ms / done.max(1) as f64 * files as f64)
            )
        };
        let _ = writeln!(
            o,
            "The peer: the seed's aggregation loop ([bench/seed/aggregate-handoffs.sh](bench/seed/aggregate-handoffs.sh), \
verbatim from its \"Aggregating 3 Parallel Implementers\" example: `jq` for `.fromAgent`, `.deliverables`, \
`.deliverables.findings[]` and `.memoryCandidate` of each handoff), over {}the same files, timed once: {took}. It only \
prints the fields; merging, conflict detection and resolution are left to the reader.\n",
            if files < a.handoffs { format!("the first {files} of ") } else { String::new() },
        );
    }
}

fn live(o: &mut String, r: &Results) {
    let _ = writeln!(o, "## The monitor with {} agents reporting every second\n", r.sizes.live_agents);
    let _ = writeln!(
        o,
        "Target: `corral monitor` redraws at least 5 times a second and uses under 10 % of one core while 1,000 agents \
rewrite their status files every second. Peer: the seed's `monitor-agents.sh` (pueue has no dashboard).\n"
    );
    let Some(l) = &r.live else { return not_measured(o, r, Target::Monitor) };
    let _ = writeln!(
        o,
        "{n} agents ({t} `corral spawn`s at a time; {s:.1} s), each the harness itself as the agent command \
(`corral-bench reporter 900`): once a second, on a fixed schedule, it rewrites its status file (`agentId`, `role`, \
`status`, `progress`, `phase`, `milestone` new every time, `lastUpdate`, `findings`) as a temp file renamed over the \
old one, the atomic write `corral report` does. So the supervisor sees {n} status writes a second.\n",
        n = l.agents,
        t = SETUP_THREADS,
        s = l.setup_s
    );
    if let (Some((rw, rc)), Some((pw, pc))) = (l.report_call, l.printf_mv) {
        let _ = writeln!(
            o,
            "The agents are not shell loops because such loops would need more CPU than this machine has: one `corral report` \
call costs {rc:.1} ms of CPU ({rw:.1} ms wall), one `printf` + `mv` iteration {pc:.1} ms ({pw:.1} ms wall), so {n} writes a \
second would take {a:.1} or {b:.1} cores by themselves (before each loop's `sleep`), on a machine with {cpus}.\n",
            n = l.agents,
            a = rc * l.agents as f64 / 1000.0,
            b = pc * l.agents as f64 / 1000.0,
            cpus = l.cpus
        );
    }
    let disk = r.live_disk.as_ref();
    let _ = writeln!(
        o,
        "The workspace is on {}, so that the filesystem is not what is measured{}. Then `corral monitor --stats FILE \
--seconds {secs}` runs in a detached tmux session, 120 x 40 (`--stats` writes the frames drawn and the monitor's CPU \
time on exit). The steady window runs from 2 s after the monitor started to 1 s before it quits; CPU times there are \
read from /proc.\n",
        l.fs,
        match disk {
            Some(d) => format!(
                ": on the temp dir's filesystem, {}, one create + write + rename in the status directory takes {} \
alone, under the directory's lock, and {} writers a second end up queued on that lock, most of them in \
uninterruptible sleep at any moment (hence load averages in the hundreds; the same run there is the second column)",
                d.fs,
                d.fs_write_ms.map(f).unwrap_or_else(|| "?".into()),
                d.agents
            ),
            None => String::new(),
        },
        secs = l.seconds
    );
    let runs: Vec<&Live> = std::iter::once(l).chain(disk).collect();
    let mut head = String::from("| |");
    let mut rule = String::from("|---|");
    for x in &runs {
        let _ = write!(head, " workspace on {} |", x.fs);
        rule.push_str("---:|");
    }
    let _ = writeln!(o, "{head}\n{rule}");
    let line = |o: &mut String, label: &str, cell: &dyn Fn(&Live) -> String| {
        let mut s = format!("| {label} |");
        for x in &runs {
            let _ = write!(s, " {} |", cell(x));
        }
        let _ = writeln!(o, "{s}");
    };
    line(o, "frames drawn", &|x| {
        let (fps, _) = live_judged(x);
        format!("{} in {} s: **{fps:.2} per second**", x.frames, x.seconds)
    });
    line(o, "monitor CPU, whole run, startup included (`--stats`)", &|x| {
        let (_, cpu) = live_judged(x);
        format!("{:.2} s: **{} of one core**", x.monitor_cpu_s, pct(cpu))
    });
    let share = |c: Option<f64>, w: f64| {
        c.map(|c| format!("{c:.2} s: {} of one core", pct(c / w.max(1e-9)))).unwrap_or_else(|| "n/a".into())
    };
    line(o, "monitor CPU, steady window", &|x| {
        format!("{} (window {:.1} s)", share(x.monitor_window_cpu_s, x.window_s), x.window_s)
    });
    line(o, "supervisor CPU, same window", &|x| share(x.supervisor_window_cpu_s, x.window_s));
    line(o, "status events the supervisor recorded per agent per second (5 agents sampled)", &|x| {
        x.status_rate.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into())
    });
    line(o, "one create + write + rename in the status directory, alone (median of 200)", &|x| {
        x.fs_write_ms.map(f).unwrap_or_else(|| "n/a".into())
    });
    line(o, "whole machine busy, same window", &|x| format!("{} of {} CPUs", pct(x.machine_busy), x.cpus));
    line(o, "load average (1, 5, 15 min) at window start / end", &|x| format!("{} / {}", x.load.0, x.load.1));
    o.push('\n');
    let _ = writeln!(
        o,
        "The supervisor keeps up when it records about 1.00 status event per agent per second (it records each \
write that changed the file). On the disk the writers themselves are held up on the directory lock (1,000 processes \
doing only this, with no supervisor watching, queue the same way there) and then catch up, since each keeps its \
schedule, so the rate there can read above or below 1.00. The load average counts processes waiting on the disk as \
well as those running; the machine's busy share includes every other process on it.\n"
    );
    let _ = writeln!(
        o,
        "The peer: the seed's `monitor-agents.sh` redraws once per run of the script; over 1,000 status files one run \
takes minutes (see the status section), so it cannot show a second-by-second picture at all. pueue has no dashboard.\n"
    );
}

fn mcp(o: &mut String, r: &Results) {
    let _ = writeln!(o, "## `spawn_agent` over MCP\n");
    let _ = writeln!(
        o,
        "Target: a median of at most 10 ms for one `spawn_agent` call over `corral mcp`'s stdio, as an MCP client sees it. \
No peer has an MCP server.\n"
    );
    let Some(m) = &r.mcp else { return not_measured(o, r, Target::Mcp) };
    let _ = writeln!(
        o,
        "[bench/mcp_spawn.py](bench/mcp_spawn.py): one `corral mcp` server on stdio, driven by the official MCP Python SDK \
client (`stdio_client` + `ClientSession`), in a workspace whose role runs `true`. After a warm-up call (which starts the \
supervisor), {} `spawn_agent` calls one after the other, each timed in the client from sending `tools/call` to reading \
its result.\n",
        m.calls
    );
    let _ = writeln!(o, "| | n | median | p90 | p99 | min | max |\n|---|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        o,
        "| spawn_agent round trip | {} | {} | {} | {} | {} | {} |\n",
        m.calls,
        f(m.median),
        f(m.p90),
        f(m.p99),
        f(m.min),
        f(m.max)
    );
    let _ = writeln!(
        o,
        "No peer: pueue has no MCP server, and the seed's orchestrator spawns through its host's task tool.\n"
    );
}

fn memory(o: &mut String, r: &Results) {
    let _ = writeln!(o, "## Supervisor memory\n");
    let _ = writeln!(
        o,
        "No target value: the supervisor's memory, idle and with running agents, is recorded beside pueued's.\n"
    );
    let m = &r.memory;
    if m.idle_kb.is_none() && m.finished_kb.is_none() && m.pueued_idle_kb.is_none() {
        return not_measured(o, r, Target::Memory);
    }
    let _ = writeln!(
        o,
        "Resident set size (VmRSS in /proc/PID/status) of the supervisor (`pid` from `corral daemon status --json`) and of \
pueued: fresh;{} with agents (tasks) running `sleep 600` (the crash to retry workspace for corral, after its supervisor was read \
fresh; a fresh pueued for pueue, the tasks added one after the other).\n",
        if m.finished > 0 {
            format!(" with the {} finished agents (tasks) of the sequential spawns in the registry;", m.finished)
        } else {
            String::new()
        }
    );
    let _ = writeln!(o, "| | corral supervisor | pueued |\n|---|---:|---:|");
    let _ = writeln!(
        o,
        "| fresh, no agent | {} | {} |",
        opt_mib(m.idle_kb),
        opt_mib(m.pueued_before_running_kb.or(m.pueued_idle_kb))
    );
    if m.finished > 0 {
        let _ = writeln!(
            o,
            "| {} finished in the registry | {} | {} |",
            m.finished,
            opt_mib(m.finished_kb),
            opt_mib(m.pueued_finished_kb)
        );
    }
    let _ = writeln!(
        o,
        "| running | {} ({} agents) | {} ({} tasks) |",
        opt_mib(m.running_kb),
        m.running,
        opt_mib(m.pueued_running_kb),
        m.pueued_running
    );
    let growth = |idle: Option<u64>, run: Option<u64>, n: usize| match (idle, run) {
        (Some(i), Some(r)) if n > 0 => kib((r as f64 - i as f64) / n as f64),
        _ => "n/a".into(),
    };
    let _ = writeln!(
        o,
        "| growth per running agent | {} | {} |",
        growth(m.idle_kb, m.running_kb, m.running),
        growth(m.pueued_before_running_kb, m.pueued_running_kb, m.pueued_running)
    );
    o.push('\n');
    if m.running > 0 {
        let _ = writeln!(
            o,
            "corral also keeps helper processes: the launcher and one per-attempt shim per running agent (the shim is \
the agent's parent, so an agent outlives its supervisor; it is forked from the launcher and shares its pages). With {} \
agents running there were {} of them: {} RSS in all, but {} PSS (shared pages divided among the processes sharing \
them), {} PSS per agent. With the supervisor's growth that is about {} per running agent. pueued has no such helper: \
its tasks are its children (each through `sh -c`). The supervisor's own PSS with the agents running: {}.\n",
            m.running,
            m.helpers,
            mib(m.helpers_rss_kb),
            mib(m.helpers_pss_kb),
            kib(m.helpers_pss_kb as f64 / m.running as f64),
            per_agent(m).map(kib).unwrap_or_else(|| "n/a".into()),
            opt_mib(m.running_pss_kb)
        );
    }
}

/// 10000 as "10,000".
fn thousands(n: usize) -> String {
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn corral(s: &Size) -> Option<&At> {
    s.corral.as_ref()
}

fn pueue(s: &Size) -> Option<&At> {
    s.pueue.as_ref()
}

/// One figure of the growth table: its value at each size (or why there is none).
struct Line {
    label: String,
    cells: Vec<std::result::Result<f64, &'static str>>,
    show: fn(f64) -> String,
    /// corral's own figures, held to "flat or linear, never superlinear".
    judged: bool,
}

/// How a figure grew between the smallest and the largest size it was measured at:
/// (the figure's factor, the agents' factor, the two sizes).
fn spread(sizes: &[usize], l: &Line) -> Option<(f64, f64, usize, usize)> {
    let at: Vec<(usize, f64)> = sizes.iter().zip(&l.cells).filter_map(|(n, c)| Some((*n, *c.as_ref().ok()?))).collect();
    let (&(lo, a), &(hi, b)) = (at.first()?, at.last()?);
    (hi > lo && a > 0.0).then(|| (b / a, hi as f64 / lo as f64, lo, hi))
}

/// flat: the figure less than doubles; then by its growth per growth in agents: linear
/// within 0.5-1.5, sublinear below, superlinear above.
fn shape(g: f64, agents: f64) -> &'static str {
    let per = g / agents;
    if g < 2.0 {
        "flat"
    } else if per < 0.5 {
        "sublinear"
    } else if per <= 1.5 {
        "linear"
    } else {
        "superlinear"
    }
}

fn growth_lines(r: &Results) -> Vec<Line> {
    let sizes = &r.growth;
    let failed = "failed";
    let cells = |pick: fn(&Size) -> Option<&At>, value: fn(&At) -> Option<f64>| {
        sizes.iter().map(|s| pick(s).map_or(Err(failed), |a| value(a).ok_or("n/a"))).collect::<Vec<_>>()
    };
    let median = |a: &At| summarize(&a.status.runs).map(|s| s.median);
    let p90 = |a: &At| summarize(&a.status.runs).map(|s| s.p90);
    let running = |a: &At| summarize(&a.running).map(|s| s.median);
    let rss = |a: &At| a.rss_kb.map(|k| k as f64);
    let fill = |a: &At| Some(a.fill_s * 1e3);
    let runs = r.sizes.growth_status_runs;
    let probes = r.sizes.growth_probes;
    let line = |label: String, cells, show: fn(f64) -> String, judged| Line { label, cells, show, judged };
    let mib_f: fn(f64) -> String = |kb| mib(kb as u64);
    let seed = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| match &s.seed {
            Some(m) => Ok(m.per_file_ms() * m.files as f64),
            None if i < r.sizes.growth_seed => Err(failed),
            None => Err("not run"),
        })
        .collect();
    vec![
        line(format!("`corral status --json`, median of {runs}"), cells(corral, median), f, true),
        line(format!("`corral status --json`, p90 of {runs}"), cells(corral, p90), f, true),
        line(format!("`pueue status --json`, median of {runs}"), cells(pueue, median), f, false),
        line(format!("`pueue status --json`, p90 of {runs}"), cells(pueue, p90), f, false),
        line("the seed's `monitor-agents.sh`, one pass".into(), seed, f, false),
        line(format!("corral: spawn to agent running, median of {probes}"), cells(corral, running), f, true),
        line(format!("pueue: add to task running, median of {probes}"), cells(pueue, running), f, false),
        line("corral supervisor RSS".into(), cells(corral, rss), mib_f, true),
        line("pueued RSS".into(), cells(pueue, rss), mib_f, false),
        line(
            format!("corral: filling, {} `corral spawn`s at a time, to all finished", SETUP_THREADS),
            cells(corral, fill),
            f,
            false,
        ),
        line(
            format!("pueue: filling, {} `pueue add`s at a time, to all finished", SETUP_THREADS),
            cells(pueue, fill),
            f,
            false,
        ),
    ]
}

fn growth_summary(o: &mut String, r: &Results) {
    let sizes: Vec<String> = r.sizes.growth.iter().map(|n| thousands(*n)).collect();
    let lines = growth_lines(r);
    let ns: Vec<usize> = r.growth.iter().map(|s| s.agents).collect();
    let cell = |l: &Line| -> String {
        if r.growth.is_empty() {
            return absent(r, Target::Growth);
        }
        let values: Vec<String> = l.cells.iter().map(|c| c.map_or_else(str::to_string, l.show)).collect();
        match spread(&ns, l) {
            Some((g, a, _, _)) => format!("{} (ratio {:.2}: {})", values.join(" / "), g / a, shape(g, a)),
            None => values.join(" / "),
        }
    };
    let judged: Vec<&Line> = lines.iter().filter(|l| l.judged).collect();
    let superlinear: Vec<&str> = judged
        .iter()
        .filter(|l| spread(&ns, l).is_some_and(|(g, a, _, _)| shape(g, a) == "superlinear"))
        .map(|l| l.label.as_str())
        .collect();
    let mut corral = cell(&lines[0]);
    if !r.growth.is_empty() {
        if superlinear.is_empty() {
            corral.push_str("; none of corral's status, spawn latency and memory figures superlinear");
        } else {
            let _ = write!(corral, "; **superlinear: {}**", superlinear.join(", "));
        }
    }
    let measured = judged.iter().all(|l| spread(&ns, l).is_some());
    let _ = writeln!(
        o,
        "| growth: `status --json` at {} agents, median of {} | {} | pueue: {} | flat or linear to 10,000, never quadratic | {} |",
        sizes.join(" / "),
        r.sizes.growth_status_runs,
        corral,
        cell(&lines[2]),
        verdict((!r.args.quick && measured).then_some(superlinear.is_empty()))
    );
}

fn growth(o: &mut String, r: &Results) {
    let sizes = r.sizes.growth;
    let (lo, hi) = (thousands(sizes[0]), thousands(sizes[2]));
    let _ = writeln!(o, "## Growth from {lo} to {hi} agents\n");
    let _ = writeln!(
        o,
        "Target: corral's `status --json`, spawn latency and supervisor memory grow flat or linearly up to 10,000 agents, \
never superlinearly. Peers: pueue at the same sizes, and the seed's `monitor-agents.sh` at the smaller ones.\n"
    );
    if r.growth.is_empty() {
        return not_measured(o, r, Target::Growth);
    }
    let seed_sizes: Vec<String> = sizes.iter().take(r.sizes.growth_seed).map(|n| thousands(*n)).collect();
    let reused: Vec<String> = r.growth.iter().filter(|s| s.seed_reused).map(|s| thousands(s.agents)).collect();
    let _ = writeln!(
        o,
        "At each size a fresh corral workspace and a fresh pueued, filled with that many finished agents (tasks), {t} \
submissions at a time: corral's agents run `{REPORTING_AGENT}` (each writes its status file, which the seed's script \
reads), pueue's tasks run `true`. Then, at that size: `status --json` {runs} times (output to /dev/null, whole process \
timed, as in the status section); the supervisor's (pueued's) RSS; {probes} probes of spawn (add) to agent (task) \
running, as in the spawn to agent running section; and, at {seed}, one pass of the seed's `monitor-agents.sh` over the workspace's status files{reuse}. \
Each workspace is removed before the next size.\n",
        t = SETUP_THREADS,
        runs = r.sizes.growth_status_runs,
        probes = r.sizes.growth_probes,
        seed = seed_sizes.join(" and "),
        reuse = if reused.is_empty() {
            String::new()
        } else {
            format!(" (at {}: the status section's pass over as many files, not run twice)", reused.join(" and "))
        },
    );
    let agents = sizes[2] as f64 / sizes[0] as f64;
    let _ = writeln!(
        o,
        "The ratio is the figure at {hi} over the figure at {lo}, divided by {agents:.0} (the growth in agents): 1.0 is \
linear growth, below 1 sublinear (a fixed cost, such as starting the CLI, dominates the small end), above 1 \
superlinear. A figure is flat when it less than doubles, linear when the ratio is within 0.5-1.5, sublinear below, \
superlinear above.\n"
    );
    let ns: Vec<usize> = r.growth.iter().map(|s| s.agents).collect();
    let mut head = String::from("|");
    for n in &ns {
        let _ = write!(head, " | {}", thousands(*n));
    }
    let _ = writeln!(o, "{head} | ratio {hi} vs {lo}, / {agents:.0} | growth |");
    let _ = writeln!(o, "|---|{}---:|---|", "---:|".repeat(ns.len()));
    for l in growth_lines(r) {
        let mut row = format!("| {} |", l.label);
        for c in &l.cells {
            let _ = write!(row, " {} |", c.map_or_else(str::to_string, l.show));
        }
        match spread(&ns, &l) {
            Some((g, a, from, to)) => {
                let between = if (from, to) == (ns[0], ns[ns.len() - 1]) {
                    String::new()
                } else {
                    format!(" ({} vs {})", thousands(to), thousands(from))
                };
                let _ =
                    writeln!(o, "{row} {:.2}{between} | {}: x{g:.1} for {a:.0} times the agents |", g / a, shape(g, a));
            }
            None => {
                let _ = writeln!(o, "{row} n/a | |");
            }
        }
    }
    o.push('\n');
    for (who, pick) in [("corral", corral as fn(&Size) -> Option<&At>), ("pueue", pueue)] {
        let bytes: Vec<String> = r
            .growth
            .iter()
            .map(|s| pick(s).map(|a| format!("{} bytes", thousands(a.status.bytes))).unwrap_or_else(|| "n/a".into()))
            .collect();
        let _ = writeln!(o, "- {who} `status --json` output: {}", bytes.join(" / "));
    }
    for m in r.growth.iter().filter_map(|s| s.seed.as_ref()).filter(|m| !m.complete()) {
        let _ = writeln!(
            o,
            "- the seed's script over {} files is extrapolated: stopped at the harness's cap after {} with {} done",
            thousands(m.files),
            f(m.ms),
            m.done
        );
    }
    if let Some(m) = r.growth.iter().filter_map(|s| s.seed.as_ref()).max_by_key(|m| m.files) {
        let _ = writeln!(
            o,
            "- the seed's script is not run at {hi}: at its rate over {} files ({} per file) one pass would take about {}",
            thousands(m.files),
            f(m.per_file_ms()),
            f(m.per_file_ms() * sizes[2] as f64)
        );
    }
    o.push('\n');
}
