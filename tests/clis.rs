//! The real Claude Code and Codex CLIs as corral agents, offline: each test starts the
//! scripted fake model server (tests/fake_model/server.py) on 127.0.0.1, a workspace whose
//! roles are exactly what `corral init --agent ...` writes, and a scratch HOME / CODEX_HOME
//! pointing the CLI at the server. scripts/test.sh installs the CLIs into target/test-deps;
//! without them each test says so and returns.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cli {
    Claude,
    Codex,
}

impl Cli {
    fn program(self) -> &'static str {
        match self {
            Cli::Claude => "claude",
            Cli::Codex => "codex",
        }
    }
    fn init_agent(self) -> &'static str {
        match self {
            Cli::Claude => "claude-code",
            Cli::Codex => "codex",
        }
    }
}

/// Where scripts/test.sh installs the CLIs.
fn cli_bin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-deps/node_modules/.bin")
}

/// The CLI's directory when it is installed and starts; else a skip message and None.
fn require(cli: Cli, test: &str) -> Option<PathBuf> {
    let dir = cli_bin_dir();
    let ok = Command::new(dir.join(cli.program()))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!(
            "SKIPPED {test}: the {} CLI is not installed in {} (scripts/test.sh installs it)",
            cli.program(),
            dir.display()
        );
        return None;
    }
    Some(dir)
}

/// The fake model server: a Python process serving the scripted turns, stopped on drop
/// (and by itself when this process dies: its stdin is a pipe from here).
struct FakeModel {
    child: Child,
    port: u16,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeModel {
    fn start(script: &Value) -> Self {
        let dir = tempfile::Builder::new().prefix("corral-model").tempdir().unwrap();
        let script_path = dir.path().join("script.json");
        std::fs::write(&script_path, serde_json::to_vec_pretty(script).unwrap()).unwrap();
        let record = dir.path().join("requests.jsonl");
        let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_model/server.py");
        let mut child = Command::new("python3")
            .arg(&server)
            .arg(&script_path)
            .arg(&record)
            .args(["--max-lifetime", "240"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the fake model server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("fake model server printed no port: {line:?}"));
        Self { child, port, record, _dir: dir }
    }

    /// Every request so far, oldest first.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a request record is JSON"))
            .collect()
    }

    /// The requests of the conversation matched by `mark`.
    fn conversation(&self, mark: &str) -> Vec<Value> {
        self.requests().into_iter().filter(|r| r["conversation"] == mark).collect()
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A workspace made by `corral init --agent`, a fake model server and a scratch home for
/// the CLI, plus the environment `corral spawn` passes on to the agents.
struct Rig {
    cli: Cli,
    ws: Ws,
    model: FakeModel,
    home: tempfile::TempDir,
    bin_dir: PathBuf,
}

impl Rig {
    /// `roles` is TOML appended to what `corral init --agent` wrote (extra `[roles.X]`
    /// tables: they inherit the agent command from `[defaults]`).
    fn new(cli: Cli, bin_dir: PathBuf, script: &Value, roles: &str) -> Self {
        let ws = Ws::bare();
        ws.ok(&["init", "--agent", cli.init_agent()]);
        let path = ws.path().join("corral.toml");
        let mut toml = std::fs::read_to_string(&path).unwrap();
        toml.push('\n');
        toml.push_str(roles);
        std::fs::write(&path, toml).unwrap();
        let model = FakeModel::start(script);
        let home = tempfile::Builder::new().prefix("corral-home").tempdir().unwrap();
        if cli == Cli::Codex {
            std::fs::write(home.path().join("config.toml"), codex_config(model.port)).unwrap();
        }
        Self { cli, ws, model, home, bin_dir }
    }

    /// `corral ARGS` with the CLI's environment: PATH holds corral and the CLI, HOME (or
    /// CODEX_HOME) is the scratch home, the API base URL is the fake model server.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.ws.cmd(args);
        self.env(&mut c);
        c
    }

    /// The CLI itself, run by the test in the workspace (as an orchestrator).
    fn cli_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin_dir.join(self.cli.program()));
        c.args(args).current_dir(self.ws.path()).stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("CORRAL_") {
                c.env_remove(k);
            }
        }
        self.env(&mut c);
        c
    }

    fn env(&self, c: &mut Command) {
        let path = format!(
            "{}:{}:{}",
            bin().parent().unwrap().display(),
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path).env("HOME", self.home.path());
        match self.cli {
            Cli::Claude => {
                c.env("ANTHROPIC_BASE_URL", format!("http://127.0.0.1:{}", self.model.port))
                    .env("ANTHROPIC_API_KEY", "fake-key")
                    .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
                    .env("DISABLE_TELEMETRY", "1")
                    .env("DISABLE_AUTOUPDATER", "1")
                    .env("DISABLE_ERROR_REPORTING", "1")
                    .env("CLAUDE_CODE_MAX_RETRIES", "0")
                    .env("API_TIMEOUT_MS", "20000");
            }
            Cli::Codex => {
                c.env("CODEX_HOME", self.home.path()).env("FAKE_MODEL_KEY", "fake-key");
            }
        }
        c.env_remove("ANTHROPIC_AUTH_TOKEN").env_remove("OPENAI_API_KEY").env_remove("OPENAI_BASE_URL");
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args).output().expect("run corral");
        assert!(
            o.status.success(),
            "corral {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Spawns an agent of `role` from the role's template; returns its id.
    fn spawn(&self, role: &str, task: &str) -> String {
        self.ok(&["spawn", "--role", role, "--task", task]).trim().to_string()
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.ws.data.join("logs").join(format!("{id}.log"))).unwrap_or_default()
    }

    /// Waits until `id` is in one of `states`; on failure shows the agent's log and the
    /// model server's requests.
    fn wait_state(&self, id: &str, states: &[&str], limit: Duration) -> Value {
        let mut last = Value::Null;
        let ok = wait_until(limit, || {
            last = self.ws.agent(id);
            states.contains(&last["status"].as_str().unwrap_or(""))
        });
        assert!(
            ok,
            "{id} never reached {states:?}; last: {last}\nlog:\n{}\nrequests served: {:?}",
            self.log(id),
            self.model.requests().iter().map(|r| r["served"].clone()).collect::<Vec<_>>()
        );
        last
    }
}

/// CODEX_HOME/config.toml: the fake provider on 127.0.0.1, nothing else on the network.
/// (`allow_login_shell = false` is not here: the role `corral init` writes passes it.)
fn codex_config(port: u16) -> String {
    format!(
        r#"model_provider = "fake"
model = "gpt-5.1-codex"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false
unbounded_connection_retries = false

[model_providers.fake]
name = "fake"
base_url = "http://127.0.0.1:{port}/v1"
wire_api = "responses"
env_key = "FAKE_MODEL_KEY"
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 20000
"#
    )
}

/// The tool results the CLI sent back to the model in one request: (text, is_error).
fn tool_results(cli: Cli, request: &Value) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    match cli {
        Cli::Claude => {
            for m in request["body"]["messages"].as_array().into_iter().flatten() {
                for part in m["content"].as_array().into_iter().flatten() {
                    if part["type"] == "tool_result" {
                        let text = match &part["content"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        out.push((text, part["is_error"].as_bool().unwrap_or(false)));
                    }
                }
            }
        }
        Cli::Codex => {
            for item in request["body"]["input"].as_array().into_iter().flatten() {
                if item["type"] == "function_call_output" {
                    let text = match &item["output"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let failed = text.contains("Process exited with code") && !text.contains("exited with code 0");
                    out.push((text, failed));
                }
            }
        }
    }
    out
}

/// The agent's own shell tool runs `corral report` then `corral handoff`, and it ends with
/// a final answer: the agent is complete, with its status and handoff written by those
/// commands.
fn reports_and_hands_off(cli: Cli, test: &str) {
    let Some(bin_dir) = require(cli, test) else { return };
    let mark = format!("report-and-handoff-{}", cli.program());
    let finding = format!("the {} shell tool reached corral", cli.program());
    let script = json!({"conversations": [{"match": mark, "turns": [
        {"bash": "corral report --status active --progress 0.5 --phase work --milestone halfway"},
        {"bash": format!("corral handoff --finding '{finding}' --decision 'kept the old API'")},
        {"text": "Done: reported and handed off."}
    ]}]});
    let rig = Rig::new(cli, bin_dir, &script, "[roles.WORKER]\nmax_retries = 0\nattempt_timeout = \"60s\"\n");
    let id = rig.spawn("WORKER", &format!("Task {mark}: report, then hand off."));
    let agent = rig.wait_state(&id, &["complete", "failed", "escalated", "timed_out", "killed"], SECS(60));
    assert_eq!(agent["status"], "complete", "{agent}\nlog:\n{}", rig.log(&id));
    // The adapter comes from the program `corral init --agent` put in the command.
    assert_eq!(agent["adapter"], cli.init_agent(), "{agent}");
    assert_eq!(rig.ws.show(&id)["command"][0], cli.program());

    // The model saw three turns; each tool call ran and succeeded.
    let reqs = rig.model.conversation(&mark);
    assert_eq!(reqs.len(), 3, "{:?}", reqs.iter().map(|r| &r["served"]).collect::<Vec<_>>());
    let results = tool_results(cli, &reqs[2]);
    assert_eq!(results.len(), 2, "two tool results in the last request: {results:?}");
    for (text, failed) in &results {
        assert!(!failed, "a corral command failed inside {}: {text}", cli.program());
    }

    // What the commands wrote: the status file and the handoff.
    let status: Value = serde_json::from_str(
        &std::fs::read_to_string(rig.ws.data.join("agent-status").join(format!("{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(status["milestone"], "halfway", "{status}");
    assert_eq!(status["phase"], "work", "{status}");
    let handoffs: Vec<_> = std::fs::read_dir(rig.ws.data.join("handoffs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&id))
        .collect();
    assert_eq!(handoffs.len(), 1, "one handoff for {id}");
    let handoff: Value = serde_json::from_str(&std::fs::read_to_string(handoffs[0].path()).unwrap()).unwrap();
    let text = handoff.to_string();
    assert!(text.contains(&finding), "{handoff}");
    assert!(text.contains("kept the old API"), "{handoff}");
    assert_eq!(handoff["fromAgent"], id.as_str());

    // The CLI's own stream went to the agent's log.
    let log = rig.log(&id);
    let marker = match cli {
        Cli::Claude => "\"type\":\"result\"",
        Cli::Codex => "\"type\":\"turn.completed\"",
    };
    assert!(log.contains(marker), "the CLI's JSON stream is in the log:\n{log}");
}

#[test]
fn claude_reports_and_hands_off_through_its_bash_tool() {
    reports_and_hands_off(Cli::Claude, "claude_reports_and_hands_off_through_its_bash_tool");
}

#[test]
fn codex_reports_and_hands_off_through_its_shell_tool() {
    reports_and_hands_off(Cli::Codex, "codex_reports_and_hands_off_through_its_shell_tool");
}

/// Runs `c` to its end, killed after `limit`; (exit code, stdout, stderr).
fn run_bounded(mut c: Command, limit: Duration) -> (Option<i32>, String, String) {
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the CLI starts");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => {
            let o = o.unwrap();
            (o.status.code(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
        }
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let o = rx.recv().unwrap().unwrap();
            panic!(
                "the CLI ran past {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

/// The worker turns: report, hand off `finding`, answer.
fn worker_turns(finding: &str) -> Value {
    json!([
        {"bash": "corral report --status active --progress 0.5 --phase work"},
        {"bash": format!("corral handoff --finding '{finding}'")},
        {"text": "handed off"}
    ])
}

/// The CLI as the orchestrator, with `corral mcp` as its MCP server: it spawns two workers
/// (real CLIs of the same kind, from the role `corral init --agent` wrote), waits for them
/// and aggregates their handoffs, all through corral's tools.
fn orchestrates_through_mcp(cli: Cli, test: &str) {
    let Some(bin_dir) = require(cli, test) else { return };
    let name = cli.program();
    let mark = format!("orchestrate-through-mcp-{name}");
    let (a, b) = (format!("mcpworker-a-{name}"), format!("mcpworker-b-{name}"));
    let (fa, fb) = (format!("worker a of {name} found the cache"), format!("worker b of {name} found the index"));
    // Claude defers MCP tools behind its ToolSearch tool; Codex lists them in a namespace.
    let tool = |t: &str, input: Value| match cli {
        Cli::Claude => json!({"tool": format!("mcp__corral__{t}"), "input": input}),
        Cli::Codex => json!({"tool": t, "namespace": "mcp__corral", "input": input}),
    };
    let mut turns = Vec::new();
    if cli == Cli::Claude {
        turns.push(json!({"tool": "ToolSearch", "input": {
            "query": "select:mcp__corral__spawn_agent,mcp__corral__wait_agents,mcp__corral__aggregate"}}));
    }
    turns.push(tool(
        "spawn_agent",
        json!({"role": "WORKER", "task": format!("Task {a}: look at the cache."), "idempotency_key": "a"}),
    ));
    turns.push(tool(
        "spawn_agent",
        json!({"role": "WORKER", "task": format!("Task {b}: look at the index."), "idempotency_key": "b"}),
    ));
    turns.push(tool("wait_agents", json!({"role": "WORKER", "timeout": "60s"})));
    turns.push(tool("aggregate", json!({"role": "WORKER"})));
    turns.push(json!({"text": "Both workers finished; the report is aggregated."}));
    let script = json!({"conversations": [
        {"match": mark, "turns": turns},
        {"match": a, "turns": worker_turns(&fa)},
        {"match": b, "turns": worker_turns(&fb)},
    ]});
    let rig = Rig::new(cli, bin_dir, &script, "[roles.WORKER]\nmax_retries = 0\nattempt_timeout = \"60s\"\n");
    let corral = bin();
    let prompt = format!("Task {mark}: coordinate two workers through the corral tools.");
    let (code, out, err) = match cli {
        Cli::Claude => {
            let config = json!({"mcpServers": {"corral": {"type": "stdio", "command": corral, "args": ["mcp"]}}});
            let config_path = rig.home.path().join("mcp.json");
            std::fs::write(&config_path, config.to_string()).unwrap();
            let c = rig.cli_cmd(&[
                "-p",
                &prompt,
                "--output-format",
                "stream-json",
                "--verbose",
                "--mcp-config",
                config_path.to_str().unwrap(),
                "--strict-mcp-config",
                "--allowedTools",
                "mcp__corral",
            ]);
            run_bounded(c, SECS(120))
        }
        Cli::Codex => {
            let mut config = std::fs::read_to_string(rig.home.path().join("config.toml")).unwrap();
            config.push_str(&format!(
                "\n[mcp_servers.corral]\ncommand = {:?}\nargs = [\"mcp\"]\n\
                 env_vars = [\"PATH\", \"HOME\", \"CODEX_HOME\", \"FAKE_MODEL_KEY\"]\n\
                 default_tools_approval_mode = \"approve\"\n",
                corral.display().to_string()
            ));
            std::fs::write(rig.home.path().join("config.toml"), config).unwrap();
            let c = rig.cli_cmd(&["exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write", &prompt]);
            run_bounded(c, SECS(120))
        }
    };
    let served: Vec<_> =
        rig.model.requests().iter().map(|r| (r["conversation"].clone(), r["served"].clone())).collect();
    let context = format!("exit {code:?}\nstdout:\n{out}\nstderr:\n{err}\nrequests: {served:?}");
    assert_eq!(code, Some(0), "{context}");

    // Every scripted turn of the orchestrator was asked for, and no tool call failed.
    let reqs = rig.model.conversation(&mark);
    assert_eq!(reqs.len(), turns.len(), "{context}");
    let last = reqs.last().unwrap();
    let results = tool_results_any(cli, last);
    assert_eq!(results.len(), turns.len() - 1, "a result for every tool call: {results:?}\n{context}");
    for (text, failed) in &results {
        assert!(!failed, "a tool call failed: {text}\n{context}");
    }
    // spawn_agent gave two ids, wait_agents saw both complete, aggregate holds both findings.
    let ids: Vec<String> = rig.ws.status().iter().map(|a| a["agentId"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let n = results.len();
    for id in &ids {
        assert!(
            results[n - 4].0.contains(id.as_str()) || results[n - 3].0.contains(id.as_str()),
            "{id} was spawned: {results:?}"
        );
        assert_eq!(rig.ws.agent(id)["status"], "complete", "{}", rig.log(id));
    }
    let wait = &results[n - 2].0;
    assert!(wait.replace(['\\', ' '], "").contains("\"allComplete\":true"), "wait_agents: {wait}");
    let aggregate = &results[n - 1].0;
    assert!(aggregate.contains(&fa) && aggregate.contains(&fb), "aggregate has both findings: {aggregate}");
    // The tool schemas the client handed the model carry corral's tools, and no format of
    // the schema generator's own (`uint32`, `double`, ...) that clients warn about.
    let tools = last["body"]["tools"].to_string();
    assert!(tools.contains("spawn_agent") && tools.contains("wait_agents"), "{tools}");
    for f in ["uint", "int32", "int64", "double", "float"] {
        assert!(!tools.contains(&format!("\"format\":\"{f}")), "format {f} in the tools: {tools}");
    }
    // The workers were real CLI runs: each conversation ran its three turns.
    assert_eq!(rig.model.conversation(&a).len(), 3);
    assert_eq!(rig.model.conversation(&b).len(), 3);
}

/// Tool results of any tool (shell or MCP) in one request: (text, failed).
fn tool_results_any(cli: Cli, request: &Value) -> Vec<(String, bool)> {
    match cli {
        Cli::Claude => tool_results(cli, request),
        Cli::Codex => request["body"]["input"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["type"] == "function_call_output")
            .map(|i| {
                let text = match &i["output"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let failed = text.contains("\"isError\":true") || text.contains("\"is_error\":true");
                (text, failed)
            })
            .collect(),
    }
}

#[test]
fn claude_orchestrates_real_claude_workers_through_corral_mcp() {
    orchestrates_through_mcp(Cli::Claude, "claude_orchestrates_real_claude_workers_through_corral_mcp");
}

#[test]
fn codex_orchestrates_real_codex_workers_through_corral_mcp() {
    orchestrates_through_mcp(Cli::Codex, "codex_orchestrates_real_codex_workers_through_corral_mcp");
}

// ---- Limits, overload, stalls, budgets ---------------------------------------------------

/// Persistent 529 / 503: each attempt ends after the CLI's own retries (one, as the role
/// sets), corral classifies it as transient and retries with its backoff, then gives up.
fn overload_is_transient_and_retried_with_backoff(cli: Cli, test: &str) {
    let Some(bin_dir) = require(cli, test) else { return };
    let mark = format!("overloaded-{}", cli.program());
    let status = if cli == Cli::Claude { 529 } else { 503 };
    let script = json!({"conversations": [{"match": mark, "turns": [
        {"status": status, "message": "Overloaded", "repeat": true}]}]});
    // The CLI's own retries: one, set by the role's command.
    let command = match cli {
        Cli::Claude => "command = [\"env\", \"CLAUDE_CODE_MAX_RETRIES=1\", \"claude\", \"-p\", \"{context}\", \"--output-format\", \"stream-json\", \"--verbose\"]\nadapter = \"claude-code\"\n".to_string(),
        Cli::Codex => "command = [\"codex\", \"exec\", \"--json\", \"--skip-git-repo-check\", \"--sandbox\", \"workspace-write\", \"-c\", \"allow_login_shell=false\", \"-c\", \"model_providers.fake.request_max_retries=1\", \"{context}\"]\n".to_string(),
    };
    let roles = format!("[roles.WORKER]\nmax_retries = 1\nbackoff = {{ initial = \"2s\" }}\n{command}");
    let rig = Rig::new(cli, bin_dir, &script, &roles);
    let id = rig.spawn("WORKER", &format!("Task {mark}."));
    let v = rig.wait_state(&id, &["complete", "failed", "escalated"], SECS(90));
    assert_ne!(v["status"], "complete", "{v}");
    let show = rig.ws.show(&id);
    let attempts = show["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "retried once: {show}");
    assert!(attempts[0]["action"].as_str().unwrap_or("").starts_with("retry"), "{show}");
    // Two requests per attempt: the CLI's first and its one retry.
    let reqs = rig.model.conversation(&mark);
    assert_eq!(reqs.len(), 4, "{:?}", reqs.iter().map(|r| &r["t"]).collect::<Vec<_>>());
    let gap = reqs[2]["t"].as_f64().unwrap() - reqs[1]["t"].as_f64().unwrap();
    assert!(gap >= 1.9, "corral's backoff of 2s between attempts: {gap}");
}

#[test]
fn claude_persistent_529_is_transient_and_retried_with_backoff() {
    overload_is_transient_and_retried_with_backoff(
        Cli::Claude,
        "claude_persistent_529_is_transient_and_retried_with_backoff",
    );
}

#[test]
fn codex_persistent_503_is_transient_and_retried_with_backoff() {
    overload_is_transient_and_retried_with_backoff(
        Cli::Codex,
        "codex_persistent_503_is_transient_and_retried_with_backoff",
    );
}

/// The model stops answering mid-stream: nothing more is printed, the agent is stale at
/// its heartbeat_timeout, killed and retried, and the retry completes.
fn stalled_stream_is_stale_killed_and_retried(cli: Cli, test: &str) {
    let Some(bin_dir) = require(cli, test) else { return };
    let stall = format!("stalls-{}", cli.program());
    let script = json!({"conversations": [
        {"match": stall, "turns": [
            {"bash": "corral report --status active --progress 0.2"},
            {"hang_after_headers": true},
            {"text": "second attempt done"}]},
    ]});
    let roles = "[roles.WORKER]\nmax_retries = 1\nheartbeat_timeout = \"6s\"\nbackoff = { initial = \"500ms\" }\n";
    let rig = Rig::new(cli, bin_dir, &script, roles);
    let id = rig.spawn("WORKER", &format!("Task {stall}."));
    let v = rig.wait_state(&id, &["complete", "failed", "escalated"], SECS(60));
    assert_eq!(v["status"], "complete", "{v}\n{}", rig.log(&id));
    let show = rig.ws.show(&id);
    let attempts = show["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{show}");
    assert_eq!(attempts[0]["failureType"], "timeout", "{show}");
    assert!(attempts[0]["reason"].as_str().unwrap_or("").contains("heartbeat"), "{show}");
    let reqs = rig.model.conversation(&stall);
    assert_eq!(reqs.len(), 3, "{:?}", reqs.iter().map(|r| &r["served"]).collect::<Vec<_>>());
    let hung = reqs[1]["t"].as_f64().unwrap();
    let retried = reqs[2]["t"].as_f64().unwrap();
    assert!(retried - hung >= 6.0, "stale only after heartbeat_timeout: {}", retried - hung);
}

#[test]
fn claude_stalled_stream_is_stale_killed_and_retried() {
    stalled_stream_is_stale_killed_and_retried(Cli::Claude, "claude_stalled_stream_is_stale_killed_and_retried");
}

#[test]
fn codex_stalled_stream_is_stale_killed_and_retried() {
    stalled_stream_is_stale_killed_and_retried(Cli::Codex, "codex_stalled_stream_is_stale_killed_and_retried");
}
// ---- What corral reads from the CLI's stream --------------------------------------------

/// The session id the CLI printed in the agent's log (claude's `system/init`, codex's
/// `thread.started`), for the attempt-th time it appears.
fn logged_sessions(cli: Cli, log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| match cli {
            Cli::Claude if v["type"] == "system" && v["subtype"] == "init" => {
                v["session_id"].as_str().map(String::from)
            }
            Cli::Codex if v["type"] == "thread.started" => v["thread_id"].as_str().map(String::from),
            _ => None,
        })
        .collect()
}

/// The CLI's own figures from the log's last result line (claude) or turn.completed
/// (codex): (input tokens, output tokens, cost in USD when the CLI gives one).
fn logged_usage(cli: Cli, log: &str) -> (u64, u64, Option<f64>) {
    let line = log
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| match cli {
            Cli::Claude => v["type"] == "result",
            Cli::Codex => v["type"] == "turn.completed",
        })
        .unwrap_or_else(|| panic!("no result in the log:\n{log}"));
    let u = &line["usage"];
    (u["input_tokens"].as_u64().unwrap(), u["output_tokens"].as_u64().unwrap(), line["total_cost_usd"].as_f64())
}

/// The agent's own run records the CLI's session id, turns, tokens and cost, as the CLI
/// reported them (Codex reports no cost: the role's token_prices price its tokens).
fn records_session_turns_tokens_and_cost(cli: Cli, test: &str) {
    let Some(bin_dir) = require(cli, test) else { return };
    let mark = format!("usage-{}", cli.program());
    let script = json!({"conversations": [{"match": mark, "turns": [
        {"bash": "corral report --status active --progress 0.5", "usage": {"input_tokens": 1000, "output_tokens": 50}},
        {"text": "done", "usage": {"input_tokens": 1200, "output_tokens": 70}}
    ]}]});
    let roles = "[roles.WORKER]\nmax_retries = 0\ntoken_prices = { input = 2.0, output = 10.0 }\n";
    let rig = Rig::new(cli, bin_dir, &script, roles);
    let id = rig.spawn("WORKER", &format!("Task {mark}."));
    rig.wait_state(&id, &["complete", "failed", "escalated", "timed_out"], SECS(60));
    let show = rig.ws.show(&id);
    assert_eq!(show["status"], "complete", "{show}");
    let log = rig.log(&id);
    let sessions = logged_sessions(cli, &log);
    assert_eq!(sessions.len(), 1, "{log}");
    assert_eq!(show["sessionId"], sessions[0].as_str(), "{show}");
    assert_eq!(show["attempts"][0]["sessionId"], sessions[0].as_str(), "{show}");
    let (input, output, cost) = logged_usage(cli, &log);
    assert_eq!(show["tokens"]["input"].as_u64(), Some(input), "{show}");
    assert_eq!(show["tokens"]["output"].as_u64(), Some(output), "{show}");
    // Two model turns were served.
    assert_eq!(rig.model.conversation(&mark).len(), 2);
    assert!(show["turns"].as_u64().is_some_and(|t| t >= 1), "{show}");
    let want = match cli {
        Cli::Claude => cost.expect("claude reports its cost"),
        Cli::Codex => (input as f64 * 2.0 + output as f64 * 10.0) / 1e6,
    };
    let got = show["costUsd"].as_f64().unwrap_or_else(|| panic!("no costUsd: {show}"));
    assert!((got - want).abs() < 1e-9, "cost {got} vs {want}");
    let health = rig.ws.json(&["health", "--json"]);
    assert!((health["costUsd"].as_f64().unwrap() - want).abs() < 1e-9, "{health}");
    let reg = rig.ws.registry();
    let rec = reg.as_array().unwrap().iter().find(|r| r["agentId"] == id.as_str()).unwrap().clone();
    assert!((rec["costUsd"].as_f64().unwrap() - want).abs() < 1e-9, "{rec}");
}

#[test]
fn claude_run_records_session_turns_tokens_and_cost() {
    records_session_turns_tokens_and_cost(Cli::Claude, "claude_run_records_session_turns_tokens_and_cost");
}

#[test]
fn codex_run_records_session_turns_tokens_and_priced_cost() {
    records_session_turns_tokens_and_cost(Cli::Codex, "codex_run_records_session_turns_tokens_and_priced_cost");
}

/// The role's command as `corral init --agent` writes it, inside `sh -c '...; then'`
/// (a wrapper that hides the CLI's exit status or outlives it), as TOML.
fn wrapped(cli: Cli, then: &str) -> String {
    let run = match cli {
        Cli::Claude => {
            "claude -p \"$0\" --output-format stream-json --verbose --allowedTools 'Bash(corral report *),Bash(corral handoff *)'"
        }
        Cli::Codex => {
            "codex exec --json --skip-git-repo-check --sandbox workspace-write -c allow_login_shell=false \"$0\""
        }
    };
    format!(
        "command = [\"sh\", \"-c\", {:?}, \"{{context}}\"]\nadapter = \"{}\"\n",
        format!("{run} </dev/null; {then}"),
        cli.init_agent()
    )
}

/// The CLI's result is an API error but the wrapper exits 0: not complete, and the
/// attempt carries the result. A run cut short before any result, exit 0: not complete
/// either ("ended without a result").
fn exit_zero_is_not_complete_without_a_good_result(cli: Cli, test: &str) {
    let Some(bin_dir) = require(cli, test) else { return };
    let (bad, none) = (format!("bad-request-{}", cli.program()), format!("no-result-{}", cli.program()));
    let script = json!({"conversations": [
        {"match": bad, "turns": [{"status": 400, "message": "scripted: this request is invalid", "repeat": true}]},
        {"match": none, "turns": [{"hang": true, "repeat": true}]},
    ]});
    let roles = format!(
        "[roles.SWALLOW]\nmax_retries = 0\n{}\n[roles.CUTSHORT]\nmax_retries = 0\n{}",
        wrapped(cli, "exit 0"),
        // The CLI is killed before it can print a result; the wrapper still exits 0.
        wrapped(cli, "exit 0")
            .replace(&format!("{} ", cli.program()), &format!("timeout -s KILL 3 {} ", cli.program()))
    );
    let rig = Rig::new(cli, bin_dir, &script, &roles);
    let a = rig.spawn("SWALLOW", &format!("Task {bad}."));
    let b = rig.spawn("CUTSHORT", &format!("Task {none}."));
    let done = ["complete", "failed", "escalated", "timed_out", "killed"];
    for id in [&a, &b] {
        let v = rig.wait_state(id, &done, SECS(60));
        assert_ne!(v["status"], "complete", "{v}\n{}", rig.log(id));
        assert_eq!(v["exitCode"], 0, "the wrapper exited 0: {v}");
    }
    let sa = rig.ws.show(&a);
    let r = &sa["attempts"][0]["result"];
    assert_eq!(r["ok"], false, "{sa}");
    if cli == Cli::Claude {
        assert_eq!(r["apiErrorStatus"], 400, "{sa}");
    }
    assert!(r["text"].as_str().unwrap_or("").contains("scripted: this request is invalid"), "{sa}");
    let sb = rig.ws.show(&b);
    let reason = sb["attempts"][0]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("without a result"), "{sb}");
    assert!(sb["attempts"][0]["result"].is_null(), "{sb}");
}

#[test]
fn claude_error_result_or_no_result_after_exit_0_is_not_complete() {
    exit_zero_is_not_complete_without_a_good_result(
        Cli::Claude,
        "claude_error_result_or_no_result_after_exit_0_is_not_complete",
    );
}

#[test]
fn codex_failed_turn_or_no_result_after_exit_0_is_not_complete() {
    exit_zero_is_not_complete_without_a_good_result(
        Cli::Codex,
        "codex_failed_turn_or_no_result_after_exit_0_is_not_complete",
    );
}

/// The server answers 429: the agent waits (no retry spent: its role allows none) until the
/// reset (Claude: the reset its message gives; Codex prints none for a plain 429, so the
/// role's backoff), a second agent of the same provider queues saying why, both complete
/// after the reset, and the first continues its CLI session.
fn rate_limit_waits_for_the_reset_holds_the_provider_and_resumes(cli: Cli, test: &str) {
    let Some(bin_dir) = require(cli, test) else { return };
    let (a, b) = (format!("limited-a-{}", cli.program()), format!("limited-b-{}", cli.program()));
    let script = json!({"conversations": [
        {"match": a, "turns": [
            {"bash": "corral report --status active --progress 0.3 --milestone before-the-limit"},
            {"status": 429, "headers": {"retry-after": "4"}, "message": "Rate limited: your usage limit resets in 4 seconds."},
            {"text": "finished after the reset"}]},
        {"match": b, "turns": [{"text": "second agent done"}]},
    ]});
    let roles = "[roles.WORKER]\nmax_retries = 0\nattempt_timeout = \"60s\"\nbackoff = { initial = \"4s\" }\n";
    let rig = Rig::new(cli, bin_dir, &script, roles);
    let first = rig.spawn("WORKER", &format!("Task {a}."));
    let waiting = rig.wait_state(&first, &["waiting", "complete", "failed", "escalated"], SECS(30));
    assert_eq!(waiting["status"], "waiting", "{waiting}\n{}", rig.log(&first));
    assert!(waiting["waitingUntil"].is_string(), "{waiting}");
    let health = rig.ws.json(&["health", "--json"]);
    let providers = health["providers"].as_array().cloned().unwrap_or_default();
    assert_eq!(providers.len(), 1, "{health}");
    assert!(providers[0]["heldUntil"].is_string(), "{health}");
    // The monitor names the hold too.
    let frame = rig.ws.cmd(&["monitor", "--once"]).output().unwrap();
    let frame = String::from_utf8_lossy(&frame.stdout);
    let name = providers[0]["name"].as_str().unwrap();
    assert!(frame.contains(&format!("{name} held until ")) && frame.contains("(rate limit)"), "{frame}");
    let second = rig.spawn("WORKER", &format!("Task {b}."));
    let queued = rig.ws.agent(&second);
    assert_eq!(queued["status"], "queued", "{queued}");
    let why = queued["reason"].as_str().unwrap_or("");
    assert!(why.contains("rate-limited"), "the queued agent says why: {queued}");
    for id in [&first, &second] {
        let v = rig.wait_state(id, &["complete", "failed", "escalated"], SECS(60));
        assert_eq!(v["status"], "complete", "{v}\n{}", rig.log(id));
    }
    let show = rig.ws.show(&first);
    let attempts = show["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{show}");
    assert_eq!(attempts[0]["failureType"], "rate_limited", "{show}");
    assert_eq!(show["budgetAttempt"], 1, "no retry spent: {show}");
    let reqs = rig.model.conversation(&a);
    assert_eq!(reqs.len(), 3, "{:?}", reqs.iter().map(|r| &r["served"]).collect::<Vec<_>>());
    // The second agent's first request, and the first agent's next one, came after the reset.
    let t429 = reqs[1]["t"].as_f64().unwrap();
    let tb = rig.model.conversation(&b)[0]["t"].as_f64().unwrap();
    assert!(tb >= t429 + 3.0, "the second agent was held until the reset ({t429} -> {tb})");
    assert!(reqs[2]["t"].as_f64().unwrap() >= t429 + 3.0);
    // The first agent continued its session: the request after the reset carries its
    // earlier tool call.
    assert_eq!(attempts[1]["resumed"], true, "{show}");
    let history = match cli {
        Cli::Claude => reqs[2]["body"]["messages"].to_string(),
        Cli::Codex => reqs[2]["body"]["input"].to_string(),
    };
    assert!(history.contains("before-the-limit"), "resumed history: {history}");
}

#[test]
fn claude_rate_limit_waits_for_the_reset_holds_the_provider_and_resumes() {
    rate_limit_waits_for_the_reset_holds_the_provider_and_resumes(
        Cli::Claude,
        "claude_rate_limit_waits_for_the_reset_holds_the_provider_and_resumes",
    );
}

#[test]
fn codex_rate_limit_waits_for_the_reset_holds_the_provider_and_resumes() {
    rate_limit_waits_for_the_reset_holds_the_provider_and_resumes(
        Cli::Codex,
        "codex_rate_limit_waits_for_the_reset_holds_the_provider_and_resumes",
    );
}

/// A CLI wrapper that lingers after the final result is stopped after result_grace and
/// counts as complete.
fn lingering_after_the_result_is_finished(cli: Cli, test: &str) {
    let Some(bin_dir) = require(cli, test) else { return };
    let linger = format!("lingers-{}", cli.program());
    let script = json!({"conversations": [{"match": linger, "turns": [{"text": "done, but the wrapper stays"}]}]});
    let roles = format!("[roles.LINGER]\nmax_retries = 0\nresult_grace = \"1s\"\n{}", wrapped(cli, "sleep 60"));
    let rig = Rig::new(cli, bin_dir, &script, &roles);
    let started = std::time::Instant::now();
    let id = rig.spawn("LINGER", &format!("Task {linger}."));
    let l = rig.wait_state(&id, &["complete", "failed", "escalated", "timed_out"], SECS(30));
    assert_eq!(l["status"], "complete", "{l}\n{}", rig.log(&id));
    assert!(started.elapsed() < SECS(30));
    let ls = rig.ws.show(&id);
    assert_eq!(ls["attempts"].as_array().unwrap().len(), 1, "{ls}");
    assert_eq!(ls["attempts"][0]["result"]["ok"], true, "{ls}");
}

#[test]
fn claude_lingering_after_its_result_is_finished_after_result_grace() {
    lingering_after_the_result_is_finished(
        Cli::Claude,
        "claude_lingering_after_its_result_is_finished_after_result_grace",
    );
}

#[test]
fn codex_lingering_after_its_result_is_finished_after_result_grace() {
    lingering_after_the_result_is_finished(
        Cli::Codex,
        "codex_lingering_after_its_result_is_finished_after_result_grace",
    );
}

/// A run that costs more than the role's max_cost_usd is stopped and escalated, the
/// figure in the reason.
fn over_budget_is_stopped_and_escalated(cli: Cli, test: &str) {
    let Some(bin_dir) = require(cli, test) else { return };
    let mark = format!("expensive-{}", cli.program());
    let script = json!({"conversations": [{"match": mark, "turns": [
        {"bash": "corral report --status active --progress 0.2", "usage": {"input_tokens": 400000, "output_tokens": 1000}},
        {"bash": "sleep 20", "usage": {"input_tokens": 400000, "output_tokens": 1000}},
        {"text": "done", "usage": {"input_tokens": 400000, "output_tokens": 1000}}]}]});
    let roles = "[roles.WORKER]\nmax_retries = 2\nmax_cost_usd = 0.5\ntoken_prices = { input = 5.0, output = 25.0 }\n";
    let rig = Rig::new(cli, bin_dir, &script, roles);
    let id = rig.spawn("WORKER", &format!("Task {mark}."));
    let v = rig.wait_state(&id, &["complete", "failed", "escalated", "killed"], SECS(60));
    assert_eq!(v["status"], "escalated", "{v}\n{}", rig.log(&id));
    let show = rig.ws.show(&id);
    let attempts = show["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "a budget is not retried: {show}");
    assert_eq!(attempts[0]["failureType"], "budget", "{show}");
    assert!(show["costUsd"].as_f64().unwrap() > 0.5, "{show}");
    let esc = rig.ws.json(&["escalations", "--json"]).to_string();
    assert!(esc.contains(&id) && esc.contains("0.5"), "{esc}");
}

#[test]
fn claude_over_max_cost_is_stopped_and_escalated() {
    over_budget_is_stopped_and_escalated(Cli::Claude, "claude_over_max_cost_is_stopped_and_escalated");
}

#[test]
fn codex_over_max_cost_is_stopped_and_escalated() {
    over_budget_is_stopped_and_escalated(Cli::Codex, "codex_over_max_cost_is_stopped_and_escalated");
}

/// The server answers 429 to three agents of one CLI at once: the burst lowers the
/// provider's concurrency (`provider_lowered`), each agent waits for the reset (Codex prints
/// none for a plain 429: the role's backoff) without spending a retry, and all three
/// complete after it.
fn burst_of_rate_limits_lowers_the_provider_and_every_agent_completes(cli: Cli, test: &str) {
    let Some(bin_dir) = require(cli, test) else { return };
    let marks: Vec<String> = (1..=3).map(|n| format!("burst-{n}-{}", cli.program())).collect();
    let conversations: Vec<Value> = marks
        .iter()
        .map(|m| {
            json!({"match": m, "turns": [
                {"status": 429, "headers": {"retry-after": "4"}, "message": "Rate limited: your usage limit resets in 4 seconds."},
                {"text": format!("{m} finished after the reset")}]})
        })
        .collect();
    let script = json!({ "conversations": conversations });
    let roles = "[roles.WORKER]\nmax_retries = 0\nattempt_timeout = \"60s\"\nbackoff = { initial = \"4s\" }\n";
    let rig = Rig::new(cli, bin_dir, &script, roles);
    let path = rig.ws.path().join("corral.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    // Admission is bounded by the provider alone here.
    std::fs::write(&path, toml.replace("[health]\n", "[health]\nprovider_recovery = \"5s\"\n")).unwrap();
    let ids: Vec<String> = marks.iter().map(|m| rig.spawn("WORKER", &format!("Task {m}."))).collect();
    let mut events = String::new();
    assert!(
        wait_until(SECS(60), || {
            events = rig.ok(&["events"]);
            events.contains("\"provider_lowered\"")
        }),
        "no provider_lowered event:\n{events}"
    );
    let lowered: Value = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["kind"] == "provider_lowered")
        .unwrap();
    let provider = match cli {
        Cli::Claude => "anthropic",
        Cli::Codex => "openai",
    };
    assert_eq!(lowered["data"]["provider"], provider, "{lowered}");
    assert!(lowered["data"]["maxConcurrent"].as_u64() < lowered["data"]["from"].as_u64(), "{lowered}");
    for id in &ids {
        let v = rig.wait_state(id, &["complete", "failed", "escalated"], SECS(120));
        assert_eq!(v["status"], "complete", "{v}\n{}", rig.log(id));
        let show = rig.ws.show(id);
        assert_eq!(show["budgetAttempt"], 1, "no retry spent: {show}");
        let attempts = show["attempts"].as_array().unwrap();
        assert_eq!(attempts[0]["failureType"], "rate_limited", "{show}");
    }
    for m in &marks {
        let reqs = rig.model.conversation(m);
        assert!(reqs.len() >= 2, "{m}: {:?}", reqs.iter().map(|r| &r["served"]).collect::<Vec<_>>());
        let t429 = reqs[0]["t"].as_f64().unwrap();
        assert!(reqs.last().unwrap()["t"].as_f64().unwrap() >= t429 + 3.0, "{m} went on only after the reset");
    }
}

#[test]
fn claude_burst_of_rate_limits_lowers_the_provider_and_every_agent_completes_after_the_reset() {
    burst_of_rate_limits_lowers_the_provider_and_every_agent_completes(
        Cli::Claude,
        "claude_burst_of_rate_limits_lowers_the_provider_and_every_agent_completes_after_the_reset",
    );
}

#[test]
fn codex_burst_of_rate_limits_lowers_the_provider_and_every_agent_completes_after_the_backoff() {
    burst_of_rate_limits_lowers_the_provider_and_every_agent_completes(
        Cli::Codex,
        "codex_burst_of_rate_limits_lowers_the_provider_and_every_agent_completes_after_the_backoff",
    );
}
