//! `corral demo`: a self-contained run of scripted agents in a temp workspace, narrated as
//! it happens: spawn without blocking, progress reports, a dependency, a crash, a hang cut
//! off by its timeout, handoffs, and the final state of every agent.

use super::{Ctx, Fail, Result};
use crate::client::Client;
use crate::ipc::{AgentView, Request, SpawnReply, SpawnRequest};
use crate::protocol::DataDir;
use crate::store::EventRecord;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the temp workspace instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

struct Script {
    role: &'static str,
    task: &'static str,
    after_first: bool,
    timeout_ms: Option<u64>,
    script: &'static str,
}

const SCRIPTS: &[Script] = &[
    Script {
        role: "PLANNER",
        task: "Plan the feature",
        after_first: false,
        timeout_ms: None,
        script: "corral report --status active --progress 0.2 --phase research --milestone read-code; sleep 0.4; \
                 corral report --progress 0.6 --phase planning --milestone outline; sleep 0.4; \
                 echo '# Plan' > plan.md; \
                 corral handoff --deliverable plan.md --finding 'three modules need changes' --decision 'split the work in two'; \
                 corral report --status complete --progress 1.0 --phase done --milestone plan-written",
    },
    Script {
        role: "IMPLEMENTER",
        task: "Implement part A (after the plan)",
        after_first: true,
        timeout_ms: None,
        script: "corral report --status active --progress 0.3 --phase implementation --milestone part-a; sleep 0.5; \
                 echo 'fn a() {}' > a.rs; \
                 corral handoff --deliverable a.rs --finding '{\"key\":\"port\",\"value\":8080,\"claim\":\"serve on 8080\",\"evidence\":[{\"kind\":\"test\",\"ref\":\"tests/port.rs\",\"passed\":true}]}'; \
                 corral report --status complete --progress 1.0 --phase done --milestone part-a",
    },
    Script {
        role: "AUDITOR",
        task: "Audit existing code (crashes)",
        after_first: false,
        timeout_ms: None,
        script: "corral report --status active --progress 0.1 --phase audit --milestone start; sleep 0.3; \
                 corral report --status failed --finding 'cannot parse config: unexpected token'; exit 3",
    },
    Script {
        role: "CLEANER",
        task: "Clean up (hangs; cut off by its 2s timeout)",
        after_first: false,
        timeout_ms: Some(2_000),
        script: "corral report --status active --progress 0.1 --phase cleanup --milestone start; sleep 1000",
    },
];

pub fn run(_ctx: &Ctx, a: Args) -> Result {
    let dir = tempfile::Builder::new().prefix("corral-demo-").tempdir()?;
    let root = dir.path().to_path_buf();
    let data = DataDir::new(root.join(".corral"));
    say(&format!("workspace {}", root.display()));
    let mut client = Client::connect(&data, &root)?;
    let bin_dir = std::env::current_exe()?.parent().map(|p| p.display().to_string()).unwrap_or_default();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let mut ids: Vec<String> = Vec::new();
    for s in SCRIPTS {
        let req = SpawnRequest {
            role: s.role.into(),
            task: s.task.into(),
            after: if s.after_first { vec![ids[0].clone()] } else { vec![] },
            timeout_ms: s.timeout_ms,
            caller_env: std::env::vars()
                .filter(|(k, _)| k != "PATH")
                .chain([("PATH".to_string(), path.clone())])
                .collect(),
            cwd: root.display().to_string(),
            command: vec!["sh".into(), "-c".into(), s.script.into()],
            ..Default::default()
        };
        let r: SpawnReply = serde_json::from_value(super::into_result(client.call(&Request::Spawn(Box::new(req)))?)?)?;
        let how = match (&r.pid, &r.reason) {
            (Some(p), _) => format!("running as pid {p}"),
            (None, Some(why)) => format!("queued: {why}"),
            _ => r.status.clone(),
        };
        say(&format!("spawned {} ({}) without waiting: {how}", r.agent_id, s.task));
        ids.push(r.agent_id);
    }
    say("the orchestrator is free; following the event log as agents work...");
    let mut events = Client::connect(&data, &root)?;
    events.send(&Request::Events { after: 0, agent: None, follow: true })?;
    let start = Instant::now();
    let mut finished = 0;
    while finished < ids.len() && start.elapsed() < Duration::from_secs(60) {
        let Some(line) = events.read_line()? else { break };
        let Ok(e) = serde_json::from_str::<EventRecord>(&line) else { continue };
        let id = e.agent_id.as_ref().map(|i| i.to_string()).unwrap_or_default();
        let d = &e.data;
        let msg = match e.kind.as_str() {
            "status" => format!(
                "{id} reports {} {:.0}% {}/{}",
                d["status"].as_str().unwrap_or(""),
                d["progress"].as_f64().unwrap_or(0.0) * 100.0,
                d["phase"].as_str().unwrap_or("-"),
                d["milestone"].as_str().unwrap_or("-")
            ),
            "started" if d["attempt"] == 1 && e.seq > 0 => format!("{id} started (pid {})", d["pid"]),
            "handoff" => format!("{id} handed off {}", d["file"].as_str().unwrap_or("")),
            "timeout" => format!("{id} ran past its timeout: TERM to its whole process group"),
            "exited" => format!("{id} exited: {}", d["reason"].as_str().unwrap_or("")),
            "complete" | "failed" | "killed" | "timed_out" => {
                finished += 1;
                format!("{id} is {}", e.kind)
            }
            _ => String::new(),
        };
        if !msg.is_empty() {
            say(&msg);
        }
    }
    let views: Vec<AgentView> =
        serde_json::from_value(super::into_result(client.call(&Request::Status { ids: vec![], role: None })?)?)?;
    println!();
    println!("final state:");
    for v in &views {
        println!(
            "  {:22} {:10} {}",
            v.agent_id,
            v.status,
            v.reason.as_deref().or(v.anomalies.first().map(String::as_str)).unwrap_or("")
        );
    }
    let handoffs = std::fs::read_dir(data.handoff_dir()).map(|r| r.count()).unwrap_or(0);
    println!("  {handoffs} handoffs in {}", data.handoff_dir().display());
    let _ = client.call(&Request::Stop);
    if a.keep {
        let kept = dir.keep();
        say(&format!("kept {}", kept.display()));
    }
    let ok = views.iter().filter(|v| v.status == "complete").count() == 2
        && views.iter().any(|v| v.status == "failed")
        && views.iter().any(|v| v.status == "timed_out");
    if ok { Ok(0) } else { Err(Fail { code: 1, msg: "the demo did not end as scripted".into() }) }
}

fn say(s: &str) {
    use std::io::Write;
    let t = crate::protocol::time::now().strftime("%H:%M:%S%.3f");
    let _ = writeln!(std::io::stdout(), "[{t}] {s}");
}
