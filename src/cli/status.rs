//! `corral status`: one line per agent.

use super::output::{age, bar};
use super::{Ctx, Result};
use crate::display::{clip, shown};
use crate::ipc::{AgentView, Request};
use crate::{note, say_to};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agents by id, unique prefix or number (default: all).
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids))]
    pub ids: Vec<String>,
    /// Only agents of this role.
    #[arg(long)]
    pub role: Option<String>,
    /// Only agents of this admission group (`--group` at spawn, or the role's `group`).
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Only agents in this state (repeatable): corral's view (queued, running, blocked,
    /// retrying, complete, failed, escalated, ...) or `needs-human` (escalated, or blocked
    /// with no process left).
    #[arg(long = "status", value_name = "S")]
    pub statuses: Vec<String>,
    /// Only agents active in this last stretch of time (e.g. `30m`, `2h`): still unfinished,
    /// or spawned, updated or ended since then.
    #[arg(long, value_name = "D")]
    pub since: Option<String>,
    /// Print JSON (a stable shape: see schemas/ and the README) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The names `--status` accepts.
const STATES: &[&str] = &[
    "queued",
    "running",
    "stale",
    "stopping",
    "retrying",
    "blocked",
    "waiting",
    "complete",
    "failed",
    "killed",
    "timed_out",
    "escalated",
    "needs-human",
    "unreadable",
];

fn wanted(v: &AgentView, statuses: &[String]) -> bool {
    statuses.is_empty() || statuses.iter().any(|s| *s == v.status || (s == "needs-human" && v.needs_human))
}

/// Active at some moment after `since`: unfinished, or spawned, updated or ended after it.
fn active_since(v: &AgentView, since: Option<jiff::Timestamp>) -> bool {
    let Some(since) = since else { return true };
    let after = |t: Option<&str>| t.and_then(crate::protocol::time::parse).is_some_and(|t| t >= since);
    !v.is_finished() || after(Some(&v.spawned_at)) || after(v.last_update.as_deref()) || after(v.ended_at.as_deref())
}

/// What `--status`, `--since` and `--group` keep, checked.
pub struct Keep {
    statuses: Vec<String>,
    since: Option<jiff::Timestamp>,
    group: Option<String>,
}

impl Keep {
    pub fn new(a: &Args) -> Result<Self> {
        if let Some(bad) = a.statuses.iter().find(|s| !STATES.contains(&s.as_str())) {
            return Err(super::usage(format!("--status {bad:?}: use one of {}", STATES.join(", "))));
        }
        if let Some(g) = &a.group {
            crate::protocol::ids::validate_group(g).map_err(|e| super::usage(format!("--group: {e}")))?;
        }
        let since = match &a.since {
            Some(d) => {
                let d = crate::config::parse_duration(d).map_err(|e| super::usage(format!("--since: {e}")))?;
                let d = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
                Some(crate::protocol::time::now().checked_sub(d).unwrap_or(jiff::Timestamp::MIN))
            }
            None => None,
        };
        Ok(Self { statuses: a.statuses.clone(), since, group: a.group.clone() })
    }

    /// Every agent is kept.
    fn all(&self) -> bool {
        self.statuses.is_empty() && self.since.is_none() && self.group.is_none()
    }

    pub fn keeps(&self, v: &AgentView) -> bool {
        let in_group = self.group.as_ref().is_none_or(|g| v.group.as_ref() == Some(g));
        wanted(v, &self.statuses) && active_since(v, self.since) && in_group
    }
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let keep = Keep::new(&a)?;
    let raw = ctx.call_raw(&Request::Status { ids: a.ids, role: a.role })?;
    if !keep.all() {
        let views: Vec<AgentView> = serde_json::from_str(&raw)?;
        let views: Vec<AgentView> = views.into_iter().filter(|v| keep.keeps(v)).collect();
        if a.json {
            crate::display::raw_out(format!("{}\n", serde_json::to_string(&views)?).as_bytes())?;
            return Ok(0);
        }
        return print_table(views);
    }
    if a.json {
        // Printed as the supervisor wrote it: one object per agent, no re-encoding.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(raw.as_bytes())?;
        out.write_all(b"\n")?;
        return Ok(0);
    }
    print_table(serde_json::from_str(&raw)?)
}

fn print_table(views: Vec<AgentView>) -> Result {
    if views.is_empty() {
        note!("no agents")?;
        return Ok(0);
    }
    table(&views, columns(), &mut std::io::stdout().lock())?;
    Ok(0)
}

/// How wide the table may be: `COLUMNS` when set, else the terminal's width; none (tasks
/// shown whole) when the output is not a terminal.
pub fn columns() -> Option<usize> {
    if let Some(n) = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<usize>().ok()).filter(|n| *n > 0) {
        return Some(n);
    }
    // SAFETY: TIOCGWINSZ fills a winsize on a terminal, fails (and is ignored) otherwise.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0).then_some(ws.ws_col as usize)
}

/// Narrowest a task is shortened to, whatever the width.
const MIN_TASK: usize = 12;

/// The table `corral status` prints, one line per agent under a header.
/// Ids are never cut: the task, last, is shortened to what is left of `columns`.
pub fn table(views: &[AgentView], columns: Option<usize>, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let width = |s: &str| shown(s).to_string().chars().count();
    let idw = views.iter().map(|v| width(&v.agent_id)).max().unwrap_or(5).max(5);
    let rw = views.iter().map(|v| width(&v.role)).max().unwrap_or(4).max(4);
    // Within the current retry budget; after a human retry, the attempt's own number too.
    let tries: Vec<String> = views
        .iter()
        .map(|v| match v.budget_attempt == v.attempt {
            true => format!("{}/{}", v.attempt, v.max_retries + 1),
            false => format!("{}/{} #{}", v.budget_attempt, v.max_retries + 1, v.attempt),
        })
        .collect();
    let tw = tries.iter().map(String::len).max().unwrap_or(3).max(3);
    // The COST column appears once some agent CLI reported usage.
    let costs: Option<Vec<String>> =
        views.iter().any(|v| v.cost_usd.is_some() || v.tokens.is_some()).then(|| views.iter().map(cost).collect());
    let cw = costs.as_ref().map_or(0, |c| c.iter().map(String::len).max().unwrap_or(4).max(4));
    let cost_head = if costs.is_some() { format!("{:>cw$}  ", "COST") } else { String::new() };
    // The GROUP column appears once some agent is in a group.
    let groups = views.iter().any(|v| v.group.is_some());
    let gw =
        if groups { views.iter().map(|v| v.group.as_deref().map_or(1, width)).max().unwrap_or(5).max(5) } else { 0 };
    let group_head = if groups { format!("{:gw$}  ", "GROUP") } else { String::new() };
    let anomalies: Vec<String> = views.iter().map(|v| v.anomalies.join(" ").trim().to_string()).collect();
    let aw = anomalies.iter().map(|a| width(a)).max().unwrap_or(0).max(9);
    say_to!(
        out,
        "{:idw$}  {:rw$}  {group_head}{:9}  {:17}  {:24}  {:>6}  {:tw$}  {cost_head}{:aw$}  TASK",
        "AGENT",
        "ROLE",
        "STATUS",
        "PROGRESS",
        "PHASE/MILESTONE",
        "AGE",
        "TRY",
        "ANOMALIES"
    )?;
    let before_task = idw
        + rw
        + 9
        + 17
        + 24
        + 6
        + tw
        + aw
        + if costs.is_some() { cw + 2 } else { 0 }
        + if groups { gw + 2 } else { 0 }
        + 2 * 8;
    for (i, (v, tries)) in views.iter().zip(tries).enumerate() {
        let c = costs.as_ref().map_or(String::new(), |c| format!("{:>cw$}  ", c[i]));
        let g = if groups { format!("{:gw$}  ", shown(v.group.as_deref().unwrap_or("-"))) } else { String::new() };
        let pm = match (&v.phase, &v.milestone) {
            (Some(p), Some(m)) => format!("{p}/{m}"),
            (Some(p), None) => p.clone(),
            (None, Some(m)) => format!("-/{m}"),
            (None, None) => "-".into(),
        };
        let pm = clip(&pm, 24);
        // The queue reason is one of the anomalies already: printed once.
        let task_line = v.task.lines().next().unwrap_or("");
        let task = match columns {
            Some(cols) => clip(task_line, cols.saturating_sub(before_task).max(MIN_TASK)),
            None => shown(task_line).to_string(),
        };
        say_to!(
            out,
            "{:idw$}  {:rw$}  {g}{:9}  {:17}  {:24}  {:>6}  {:tw$}  {c}{:aw$}  {}",
            shown(&v.agent_id),
            shown(&v.role),
            shown(&v.status),
            bar(v.progress, 10),
            pm,
            age(v.age_seconds),
            tries,
            shown(&anomalies[i]),
            task.trim_end()
        )?;
    }
    Ok(())
}

/// `$0.0123`, or the tokens when the cost is not known, or `-`.
fn cost(v: &AgentView) -> String {
    match (v.cost_usd, v.tokens) {
        (Some(c), _) => format!("${c:.4}"),
        (None, Some(t)) => format!("{}k tok", t.total().div_ceil(1000)),
        (None, None) => "-".into(),
    }
}
