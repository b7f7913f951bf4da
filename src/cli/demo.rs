//! `corral demo`: a self-contained run of scripted agents in a temp workspace, narrated as
//! it happens: spawning without blocking, progress reports, a dependency, a transient crash
//! retried with backoff, a hang killed at its timeout and retried with a longer one, a
//! permanent failure escalated to a human, an agent blocked on an external API with nobody
//! left to unblock it (a human is asked, and a message resumes it), spawns queued by the
//! health gate, handoffs, and a conflict a human settles.

use super::{Ctx, Fail, Result};
use crate::client::Client;
use crate::ipc::{AgentView, Request, SpawnReply, SpawnRequest};
use crate::protocol::DataDir;
use crate::say;
use crate::store::EventRecord;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the temp workspace instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

const CONFIG: &str = r#"# The demo's policy: the seed's shape, with second-scale timings.
[defaults]
backoff = { initial = "500ms", coefficient = 2.0 }
[roles.CLEANER]
attempt_timeout = "1500ms"   # attempt 2 gets 3s (progressive timeout)
max_retries = 1
[health]
max_concurrent = 3
breaker_failures = 0
"#;

struct Script {
    role: &'static str,
    task: &'static str,
    after_first: bool,
    script: &'static str,
}

const SCRIPTS: &[Script] = &[
    Script {
        role: "PLANNER",
        task: "Plan the feature",
        after_first: false,
        script: "corral report --status active --progress 0.2 --phase research --milestone read-code; sleep 0.4; \
                 corral report --progress 0.6 --phase planning --milestone outline; sleep 0.4; \
                 echo '# Plan' > plan.md; \
                 corral handoff --deliverable plan.md --finding 'three modules need changes' --decision 'split the work in two' \
                   --finding '{\"key\":\"database\",\"value\":\"postgres\",\"claim\":\"postgres fits the load\",\"evidence\":[{\"kind\":\"citation\",\"ref\":\"docs/capacity.md\"}]}'; \
                 corral report --status complete --progress 1.0 --phase done --milestone plan-written",
    },
    Script {
        role: "IMPLEMENTER",
        task: "Implement part A (waits for the plan)",
        after_first: true,
        script: "corral report --status active --progress 0.3 --phase implementation --milestone part-a; sleep 0.5; \
                 echo 'fn a() {}' > a.rs; \
                 corral handoff --deliverable a.rs --finding '{\"key\":\"port\",\"value\":8080,\"claim\":\"serve on 8080\",\"evidence\":[{\"kind\":\"test\",\"ref\":\"tests/port.rs\",\"passed\":true}]}'; \
                 corral report --status complete --progress 1.0 --phase done --milestone part-a",
    },
    Script {
        role: "AUDITOR",
        task: "Audit the API client (hits a rate limit once)",
        after_first: false,
        script: "if [ \"$CORRAL_ATTEMPT\" = 1 ]; then corral report --status active --progress 0.1 --phase audit; sleep 0.3; \
                 corral report --status failed --finding 'API rate limit exceeded'; exit 1; fi; \
                 corral report --status active --progress 0.7 --phase audit --milestone retried; sleep 0.3; \
                 corral handoff --finding 'client retries are bounded' \
                   --finding '{\"key\":\"port\",\"value\":9090,\"claim\":\"9090 is free\",\"evidence\":[{\"kind\":\"reasoning\",\"ref\":\"no service listed on it\"}]}'; \
                 corral report --status complete --progress 1.0",
    },
    Script {
        role: "CLEANER",
        task: "Clean up (hangs on its first attempt)",
        after_first: false,
        script: "if [ \"$CORRAL_ATTEMPT\" = 1 ]; then sleep 1000; fi; \
                 corral report --status complete --progress 1.0 --phase cleanup --milestone done",
    },
    Script {
        role: "REVIEWER",
        task: "Review the migration (fails for good)",
        after_first: false,
        script: "corral report --status active --progress 0.2 --phase review; sleep 0.2; \
                 corral report --status failed --finding 'schema migration 0042 conflicts with production data'; exit 2",
    },
    Script {
        role: "INTEGRATOR",
        task: "Wire up payments (blocked on an external API)",
        after_first: false,
        script: "if [ \"$CORRAL_ATTEMPT\" = 1 ]; then \
                 corral report --status blocked --finding 'waiting on external API: the payments sandbox is down'; \
                 sleep 0.3; exit 0; fi; \
                 grep -q 'sandbox is back' \"$CORRAL_INBOX_FILE\" || exit 3; \
                 corral report --status complete --progress 1.0 --phase done --milestone payments-wired",
    },
    Script {
        role: "DOCS",
        task: "Write the changelog (queued until capacity frees)",
        after_first: false,
        script: "corral report --status active --progress 0.5 --phase writing; sleep 0.3; \
                 corral handoff --finding 'changelog written' \
                   --finding '{\"key\":\"database\",\"value\":\"sqlite\",\"claim\":\"sqlite is enough\",\"evidence\":[{\"kind\":\"citation\",\"ref\":\"docs/deploy.md\"}]}'; \
                 corral report --status complete --progress 1.0",
    },
];

pub fn run(_ctx: &Ctx, a: Args) -> Result {
    let dir = tempfile::Builder::new().prefix("corral-demo-").tempdir()?;
    let root = dir.path().to_path_buf();
    std::fs::write(root.join(crate::config::CONFIG_FILE), CONFIG)?;
    let data = DataDir::new(root.join(".corral"));
    say(&format!("workspace {} (max 3 agents at once, backoff 500ms)", root.display()));
    let mut client = Client::connect(&data, &root)?;
    let bin_dir = std::env::current_exe()?.parent().map(|p| p.display().to_string()).unwrap_or_default();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let env: Vec<(String, String)> =
        std::env::vars().filter(|(k, _)| k != "PATH").chain([("PATH".to_string(), path)]).collect();
    let mut ids: Vec<String> = Vec::new();
    for s in SCRIPTS {
        let req = SpawnRequest {
            role: s.role.into(),
            task: s.task.into(),
            after: if s.after_first { vec![ids[0].clone()] } else { vec![] },
            caller_env: env.clone(),
            cwd: root.display().to_string(),
            command: vec!["sh".into(), "-c".into(), s.script.into()],
            ..Default::default()
        };
        let r: SpawnReply = serde_json::from_value(super::into_result(client.call(&Request::Spawn(Box::new(req)))?)?)?;
        let how = match (&r.pid, &r.reason) {
            (Some(p), _) => format!("running as pid {p}"),
            (None, Some(why)) => format!("QUEUED: {why}"),
            _ => r.status.clone(),
        };
        say(&format!("spawned {} ({}) without waiting: {how}", r.agent_id, s.task));
        ids.push(r.agent_id);
    }
    say("the orchestrator is free; following the event log as agents work...");
    follow(&data, &root, ids.len())?;
    let views: Vec<AgentView> =
        serde_json::from_value(super::into_result(client.call(&Request::Status { ids: vec![], role: None })?)?)?;
    say!("")?;
    say!("final state:")?;
    for v in &views {
        let why = v.reason.as_deref().map(|r| format!("  ({})", clip(r, 90))).unwrap_or_default();
        say!("  {:22} {:10} attempts {}{why}", v.agent_id, v.status, v.attempt)?;
    }
    // The final step of the pattern: one deliverable from every handoff.
    say("aggregating the handoffs (corral aggregate)...");
    let ctx = Ctx { ws: crate::config::Workspace::discover(&root).map_err(super::usage)?, data: data.clone() };
    let report = crate::ops::collect::aggregate(ctx.target(), &[], None).map_err(super::fail)?;
    say!("")?;
    crate::display::say_block(&format!("{}\n", crate::aggregate::render_markdown(&report)))?;
    let resolved = report.conflicts.iter().any(|c| c.resolution == crate::aggregate::Resolution::Evidence);
    let unresolved = report.conflicts.iter().any(|c| c.resolution == crate::aggregate::Resolution::Unresolved);
    let escalations = super::into_result(client.call(&Request::Escalations { all: false })?)?;
    say!("")?;
    say!("escalations for a human ({}):", data.escalations_file().display())?;
    for e in escalations.as_array().into_iter().flatten() {
        say!(
            "  #{} {}: {}",
            e["n"],
            e["agentId"].as_str().unwrap_or(""),
            clip(e["reason"].as_str().unwrap_or(""), 100)
        )?;
    }
    let settled = human_answers(&mut client, &data, &root, &ctx, &ids)?;
    let views: Vec<AgentView> =
        serde_json::from_value(super::into_result(client.call(&Request::Status { ids: vec![], role: None })?)?)?;
    let handoffs = std::fs::read_dir(data.handoff_dir()).map(|r| r.count()).unwrap_or(0);
    say!("")?;
    say!("{handoffs} handoffs in {}", data.handoff_dir().display())?;
    let (report_file, timeline) = write_outputs(&mut client, &root, a.keep, &settled)?;
    say!("the unified report: {}", report_file.display())?;
    say!("timeline of the run (open it in a browser): {}", timeline.display())?;
    let _ = client.call(&Request::Stop);
    if a.keep {
        let kept = dir.keep();
        say(&format!("kept {}", kept.display()));
    }
    let status = |role: &str| views.iter().find(|v| v.role == role).map(|v| (v.status.as_str(), v.attempt));
    let human_settled = settled.conflicts.iter().any(|c| c.resolution == crate::aggregate::Resolution::Human);
    let as_scripted = status("PLANNER") == Some(("complete", 1))
        && status("IMPLEMENTER") == Some(("complete", 1))
        && status("AUDITOR") == Some(("complete", 2))
        && status("CLEANER") == Some(("complete", 2))
        && status("REVIEWER") == Some(("escalated", 1))
        && status("DOCS") == Some(("complete", 1))
        && status("INTEGRATOR") == Some(("complete", 2))
        && human_settled
        && resolved
        && unresolved;
    if as_scripted { Ok(0) } else { Err(Fail { code: 1, msg: "the demo did not end as scripted".into() }) }
}

/// The unified report (Markdown, as settled by the human) and beside it the run as a
/// picture (`corral timeline`): in the workspace when it is kept, else in a directory of
/// their own in the temp dir, where they outlive the workspace.
fn write_outputs(
    client: &mut Client,
    root: &std::path::Path,
    keep: bool,
    report: &crate::aggregate::Report,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let runs = super::timeline::collect(client, vec![], None)?;
    let page = super::timeline::render(&runs, 1400, super::timeline::Format::Html);
    let dir = if keep { root.to_path_buf() } else { tempfile::Builder::new().prefix("corral-demo-").tempdir()?.keep() };
    let (report_file, timeline) = (dir.join("report.md"), dir.join("timeline.html"));
    std::fs::write(&report_file, crate::aggregate::render_markdown(report))?;
    std::fs::write(&timeline, page)?;
    Ok((report_file, timeline))
}

/// The human's part: a message resumes the blocked agent, and the unresolved conflict is
/// settled by choosing a value. Returns the aggregate that follows.
fn human_answers(
    client: &mut Client,
    data: &DataDir,
    root: &std::path::Path,
    ctx: &Ctx,
    ids: &[String],
) -> Result<crate::aggregate::Report> {
    let views: Vec<AgentView> =
        serde_json::from_value(super::into_result(client.call(&Request::Status { ids: vec![], role: None })?)?)?;
    let after: u64 = serde_json::from_value(super::into_result(client.call(&Request::LastSeq)?)?)?;
    let mut resumed = 0;
    for v in views.iter().filter(|v| v.needs_human && v.status == "blocked") {
        say(&format!("the human answers {} (corral tell): the sandbox is back", v.agent_id));
        let tell = Request::Tell { id: v.agent_id.clone(), text: "The payments sandbox is back up.".into() };
        super::into_result(client.call(&tell)?)?;
        resumed += 1;
    }
    follow_from(data, root, resumed, after)?;
    let escalations: Vec<crate::policy::agent::Escalation> =
        serde_json::from_value(super::into_result(client.call(&Request::Escalations { all: false })?)?)?;
    for e in escalations.iter().filter(|e| e.conflict.is_some()) {
        let key = e.conflict.as_ref().map(|c| c.key.clone()).unwrap_or_default();
        say(&format!("the human settles the conflict on {key} (corral escalations resolve {} --choose postgres)", e.n));
        let answer = crate::policy::escalation::Answer { choose: Some("postgres".into()), ..Default::default() };
        let note = Some("production already runs postgres".to_string());
        super::into_result(client.call(&Request::Resolve { n: e.n, note, answer })?)?;
    }
    let _ = ids;
    say("aggregating again: the human's answer stands");
    let report = crate::ops::collect::aggregate(ctx.target(), &[], None).map_err(super::fail)?;
    for c in &report.conflicts {
        let how =
            serde_json::to_value(c.resolution).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        say!("  conflict on {}: resolved by {how}: {}", c.key, clip(&c.reason, 110))?;
    }
    Ok(report)
}

/// Narrates the event log until every agent is finished.
fn follow(data: &DataDir, root: &std::path::Path, total: usize) -> Result<()> {
    follow_from(data, root, total, 0)
}

/// Narrates events after `after` until `total` agents finish.
fn follow_from(data: &DataDir, root: &std::path::Path, total: usize, after: u64) -> Result<()> {
    let mut events = Client::connect(data, root)?;
    events.send(&Request::Events { after, agent: None, follow: true })?;
    let start = Instant::now();
    let mut finished = 0;
    while finished < total && start.elapsed() < Duration::from_secs(60) {
        let Some(line) = events.read_line()? else { break };
        let Ok(e) = serde_json::from_str::<EventRecord>(&line) else { continue };
        let id = e.agent_id.as_ref().map(|i| i.to_string()).unwrap_or_default();
        let d = &e.data;
        let s = |k: &str| d[k].as_str().unwrap_or("-").to_string();
        let msg = match e.kind.as_str() {
            "status" => format!(
                "{id} reports {} {:.0}% {}/{}",
                s("status"),
                d["progress"].as_f64().unwrap_or(0.0) * 100.0,
                s("phase"),
                s("milestone")
            ),
            "started" => format!(
                "{id} attempt {} started (pid {}, timeout {})",
                d["attempt"],
                d["pid"],
                crate::policy::lifecycle::fmt_ms(d["timeoutMs"].as_u64().unwrap_or(0))
            ),
            "queued" => format!("{id} QUEUED: {}", s("reason")),
            "handoff" => format!("{id} handed off {}", s("file").rsplit('/').next().unwrap_or("")),
            "timeout" => format!("{id} TIMEOUT: past its attempt timeout; TERM to its whole process group"),
            "exited" => format!("{id} exited: {}", s("reason")),
            "classified" => format!("{id} classified as {} -> {} ({})", s("failureType"), s("action"), s("rule")),
            "retry_scheduled" => format!(
                "{id} RETRY {} scheduled in {}",
                d["retry"],
                crate::policy::lifecycle::fmt_ms(d["delayMs"].as_u64().unwrap_or(0))
            ),
            "escalation_opened" => format!("{id} ESCALATED to a human: escalation #{}", d["escalation"]),
            "waiting" => format!("{id} BLOCKED: {} (its process waits; no retry is spent)", s("blocker")),
            "needs_human" => {
                finished += 1;
                format!("{id} NEEDS A HUMAN: blocked, and its process is gone (nobody left to unblock it)")
            }
            "escalated" => {
                finished += 1;
                format!("{id} is escalated")
            }
            k if crate::policy::agent::AgentState::FINISHED.contains(&k) && k != "escalated" => {
                finished += 1;
                format!("{id} is {}", e.kind)
            }
            _ => String::new(),
        };
        if !msg.is_empty() {
            say(&msg);
        }
    }
    Ok(())
}

fn clip(s: &str, n: usize) -> String {
    let s = crate::display::escape(s);
    if s.chars().count() <= n { s.into_owned() } else { format!("{}...", s.chars().take(n).collect::<String>()) }
}

/// One narrated line, stamped with the time.
fn say(s: &str) {
    let t = crate::protocol::time::now().strftime("%H:%M:%S%.3f");
    let _ = crate::say!("[{t}] {s}");
}
