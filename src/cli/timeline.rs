//! `corral timeline`: a picture of the run, as SVG or as an HTML page holding it. The
//! attempts come from the supervisor's views (`show`), the waits and escalations from the
//! event log; `crate::timeline` lays them out. In cluster mode the same picture is drawn
//! from the database (`cluster_timeline`).

use super::{Ctx, Fail, Result, into_result, usage};
use crate::client::Client;
use crate::ipc::{AgentView, Reply, Request, ShowView};
use crate::store::EventRecord;
use crate::timeline::{AgentRun, Attempt, Event, Outcome};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these agents (ids, unique prefixes or numbers); default: every agent in the views.
    #[arg(value_name = "ID", add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids))]
    pub ids: Vec<String>,
    /// Only agents of this role.
    #[arg(long, value_name = "R")]
    pub role: Option<String>,
    /// Write the picture to FILE instead of stdout: `.svg` for the SVG, `.html` (or `.htm`)
    /// for a page that holds it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// svg or html; default: from --out's extension, else svg.
    #[arg(long, value_name = "F")]
    pub format: Option<String>,
    /// The picture's width in pixels (400 to 20000); the run's time is scaled to fit it.
    #[arg(long, value_name = "PX", default_value_t = 1400)]
    pub width: u32,
    /// What the picture shows, as JSON instead: per agent its attempts (times, outcome,
    /// reason) and the events that make its waits and marks.
    #[arg(long, conflicts_with_all = ["out", "format"])]
    pub json: bool,
}

/// One agent's row as `timeline --json` gives it.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RowJson<'a> {
    agent_id: &'a str,
    role: &'a str,
    task: &'a str,
    status: &'a str,
    spawned_at: String,
    attempts: Vec<AttemptJson<'a>>,
    events: Vec<EventJson<'a>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AttemptJson<'a> {
    attempt: u32,
    started_at: String,
    ended_at: Option<String>,
    /// complete, failed, timeout, killed, rate_limited, running, ... (the bar's colour).
    outcome: &'static str,
    reason: Option<&'a str>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EventJson<'a> {
    at: String,
    kind: &'a str,
    reason: Option<&'a str>,
    escalation: Option<u64>,
}

fn rows_json(runs: &[AgentRun]) -> Vec<RowJson<'_>> {
    let t = |x: &jiff::Timestamp| crate::protocol::time::rfc3339(*x);
    runs.iter()
        .map(|r| RowJson {
            agent_id: &r.id,
            role: &r.role,
            task: &r.task,
            status: &r.status,
            spawned_at: t(&r.spawned),
            attempts: r
                .attempts
                .iter()
                .map(|a| AttemptJson {
                    attempt: a.n,
                    started_at: t(&a.start),
                    ended_at: a.end.as_ref().map(t),
                    outcome: a.outcome.name(),
                    reason: a.reason.as_deref(),
                })
                .collect(),
            events: r
                .events
                .iter()
                .map(|e| EventJson {
                    at: t(&e.at),
                    kind: &e.kind,
                    reason: e.reason.as_deref(),
                    escalation: e.escalation,
                })
                .collect(),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Html,
}

impl Format {
    /// From `--format`, else from the file's extension, else SVG.
    fn choose(flag: Option<&str>, out: Option<&Path>) -> Result<Self> {
        match flag {
            Some("svg") => return Ok(Self::Svg),
            Some("html") => return Ok(Self::Html),
            Some(other) => return Err(usage(format!("--format {other:?}: use svg or html"))),
            None => {}
        }
        let Some(out) = out else { return Ok(Self::Svg) };
        match out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("svg") => Ok(Self::Svg),
            Some("html" | "htm") => Ok(Self::Html),
            _ => Err(usage(format!(
                "--out {}: name a .svg or .html file, or say which with --format svg|html",
                out.display()
            ))),
        }
    }
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let format = check(&a)?;
    let mut client = ctx.client()?;
    let runs = collect(&mut client, a.ids.clone(), a.role.clone())?;
    output(&runs, &a, format)
}

/// The flags checked before anything is read: the width, and the format the picture is
/// written in.
pub fn check(a: &Args) -> Result<Format> {
    if !(400..=20_000).contains(&a.width) {
        return Err(usage(format!("--width {}: give a width from 400 to 20000 pixels", a.width)));
    }
    Format::choose(a.format.as_deref(), a.out.as_deref())
}

/// Writes the picture of `runs` (or, with `--json`, what it shows) where `a` says.
pub fn output(runs: &[AgentRun], a: &Args, format: Format) -> Result {
    if a.json {
        super::output::print_json(&rows_json(runs))?;
        return Ok(0);
    }
    let text = render(runs, a.width, format);
    match &a.out {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| Fail { code: 1, msg: format!("writing {}: {e}", path.display()) })?;
            crate::note!("timeline of {} agents written to {}", runs.len(), path.display())?;
        }
        None => crate::display::raw_out(text.as_bytes())?,
    }
    Ok(0)
}

/// The picture of `runs` as it is now, in the wall clock of this machine.
pub fn render(runs: &[AgentRun], width: u32, format: Format) -> String {
    let o = crate::timeline::Options {
        width,
        tz: jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC),
        now: crate::protocol::time::now(),
    };
    let l = crate::timeline::layout(runs, &o);
    let svg = crate::timeline::svg(&l);
    match format {
        Format::Svg => svg,
        Format::Html => crate::timeline::html(&svg, &l.title),
    }
}

/// An event of the log as the picture reads it: its reason (or note, or the blocker it
/// waits on) and escalation number.
pub fn event_of(kind: &str, at: jiff::Timestamp, data: &serde_json::Value) -> Event {
    let text = |k: &str| data.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Event {
        at,
        kind: kind.to_string(),
        reason: text("reason").or_else(|| text("note")).or_else(|| text("blocker")),
        escalation: data.get("escalation").and_then(|v| v.as_u64()),
        blocker: kind == "waiting" && data.get("blocker").is_some(),
    }
}

/// What the picture needs of the agents `ids` (all, when empty) of `role`: their attempts
/// from `show` and the state changes and escalations from the event log.
pub fn collect(client: &mut Client, ids: Vec<String>, role: Option<String>) -> Result<Vec<AgentRun>> {
    let views: Vec<AgentView> = serde_json::from_value(into_result(client.call(&Request::Status { ids, role })?)?)?;
    let mut events: HashMap<String, Vec<Event>> = views.iter().map(|v| (v.agent_id.clone(), Vec::new())).collect();
    // Page by page: the log can hold millions of events; only the kinds drawn are kept.
    let mut after = 0;
    loop {
        client.send(&Request::Events { after, agent: None, follow: false })?;
        let line = client.read_line()?.ok_or_else(|| Fail { code: 1, msg: "no reply from the supervisor".into() })?;
        let page: Vec<EventRecord> = serde_json::from_value(into_result(serde_json::from_str::<Reply>(&line)?)?)?;
        for e in &page {
            after = e.seq;
            if !crate::timeline::EVENT_KINDS.contains(&e.kind.as_str()) {
                continue;
            }
            let (Some(id), Some(at)) = (&e.agent_id, crate::protocol::time::parse(&e.at)) else { continue };
            let Some(list) = events.get_mut(id.as_str()) else { continue };
            list.push(event_of(&e.kind, at, &e.data));
        }
        if page.len() < crate::ipc::EVENTS_PAGE {
            break;
        }
    }
    let mut runs = Vec::with_capacity(views.len());
    for v in views {
        let s: ShowView =
            serde_json::from_value(into_result(client.call(&Request::Show { id: v.agent_id.clone() })?)?)?;
        let killed = s.agent.status == "killed";
        let last = s.attempts.len().saturating_sub(1);
        let attempts = s
            .attempts
            .iter()
            .enumerate()
            .filter_map(|(i, at)| {
                let start = crate::protocol::time::parse(&at.started_at)?;
                let end = at.ended_at.as_deref().and_then(crate::protocol::time::parse);
                let outcome = Outcome::of(
                    at.failure_type.as_deref(),
                    at.ended_at.is_some(),
                    at.action.as_deref(),
                    killed && i == last,
                );
                Some(Attempt { n: at.attempt, start, end, outcome, reason: at.reason.clone() })
            })
            .collect();
        let spawned = crate::protocol::time::parse(&s.agent.spawned_at).unwrap_or_else(crate::protocol::time::now);
        runs.push(AgentRun {
            open: !s.agent.is_finished(),
            events: events.remove(&s.agent.agent_id).unwrap_or_default(),
            id: s.agent.agent_id,
            role: s.agent.role,
            task: s.agent.task,
            status: s.agent.status,
            spawned,
            attempts,
        });
    }
    Ok(runs)
}
