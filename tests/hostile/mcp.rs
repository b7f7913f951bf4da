//! Hostile scenarios: mcp. A client writes malformed JSON-RPC to `corral mcp` on raw stdio:
//! not JSON, truncated JSON, batches, scalars, a wrong `jsonrpc`, bad ids and methods, NUL
//! bytes, invalid UTF-8, a 2 MB line of garbage, a line past the size bound, parameters that
//! do not fit. Each must get its JSON-RPC error (code and id), and a valid request right
//! after it must still be answered: no silence, no exit.

use crate::common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

struct Mcp {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Mcp {
    fn start(ws: &Ws) -> Self {
        let mut child: Child = {
            let mut c: Command = ws.cmd(&["mcp"]);
            c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
            c.spawn().expect("corral mcp starts")
        };
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, stdin: Some(stdin), lines }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(bytes).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// The next message from the server, or `None` after a few seconds of silence.
    fn next(&self) -> Option<Value> {
        let line = self.lines.recv_timeout(SECS(10)).ok()?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("the server wrote a line that is not JSON ({e}): {line}")),
        )
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_malformed_message_is_answered_and_the_server_keeps_serving() {
    let ws = Ws::new();
    let mut mcp = Mcp::start(&ws);
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "hostile", "version": "1"}}});
    mcp.send(init.to_string().as_bytes());
    let r = mcp.next().expect("initialize is answered");
    assert_eq!(r["id"], 0, "{r}");
    mcp.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);

    let garbage = vec![b'x'; 2 * 1024 * 1024];
    let oversized =
        format!(r#"{{"jsonrpc":"2.0","id":99,"method":"ping","params":{{"pad":"{}"}}}}"#, "y".repeat(5 << 20));
    let cases: Vec<(&str, Vec<u8>, i64, Value)> = vec![
        ("not-json", b"hello, server".to_vec(), -32700, Value::Null),
        ("truncated", br#"{"jsonrpc":"2.0","id":100,"method":"ping""#.to_vec(), -32700, Value::Null),
        ("batch", br#"[{"jsonrpc":"2.0","id":101,"method":"ping"}]"#.to_vec(), -32600, Value::Null),
        ("empty-batch", b"[]".to_vec(), -32600, Value::Null),
        ("scalar", b"42".to_vec(), -32600, Value::Null),
        ("wrong-jsonrpc", br#"{"jsonrpc":"1.0","id":102,"method":"ping"}"#.to_vec(), -32600, json!(102)),
        ("no-jsonrpc", br#"{"id":"a-103","method":"ping"}"#.to_vec(), -32600, json!("a-103")),
        ("object-id", br#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#.to_vec(), -32600, Value::Null),
        ("number-method", br#"{"jsonrpc":"2.0","id":104,"method":5}"#.to_vec(), -32600, json!(104)),
        ("no-method", br#"{"jsonrpc":"2.0","id":105}"#.to_vec(), -32600, json!(105)),
        ("nul-bytes", b"{\"jsonrpc\":\"2.0\",\"id\":106,\"method\":\"ping\0\0\"}".to_vec(), -32700, Value::Null),
        ("invalid-utf8", b"{\"jsonrpc\":\"2.0\",\"id\":107,\"method\":\"p\xff\xfeng\"}".to_vec(), -32700, Value::Null),
        ("2mb-garbage", garbage, -32700, Value::Null),
        ("oversized", oversized.into_bytes(), -32600, Value::Null),
        (
            "bad-params",
            br#"{"jsonrpc":"2.0","id":108,"method":"tools/call","params":{"name":7}}"#.to_vec(),
            -32602,
            json!(108),
        ),
        ("unknown-method", br#"{"jsonrpc":"2.0","id":109,"method":"no/such/method"}"#.to_vec(), -32601, json!(109)),
    ];
    let (mut unanswered, mut wrong, mut dead_after) = (0, 0, 0);
    for (i, (name, bytes, code, id)) in cases.iter().enumerate() {
        mcp.send(bytes);
        match mcp.next() {
            None => {
                eprintln!("{name}: no reply");
                unanswered += 1;
            }
            Some(r) if r["error"]["code"] != *code || r["id"] != *id => {
                eprintln!("{name}: expected code {code} id {id}, got {r}");
                wrong += 1;
            }
            Some(_) => {}
        }
        // The server still serves: a ping right after is answered.
        let ping = 1000 + i as i64;
        mcp.send(json!({"jsonrpc": "2.0", "id": ping, "method": "ping"}).to_string().as_bytes());
        match mcp.next() {
            Some(r) if r["id"] == ping && r.get("result").is_some() => {}
            other => {
                eprintln!("{name}: the ping after it got {other:?}");
                dead_after += 1;
            }
        }
    }
    // A real request after all of it.
    mcp.send(br#"{"jsonrpc":"2.0","id":2000,"method":"tools/list"}"#);
    let tools = mcp.next().expect("tools/list is answered");
    let listed = tools["result"]["tools"].as_array().map(Vec::len).unwrap_or(0);
    let alive = mcp.child.try_wait().unwrap().is_none();
    println!(
        "HOSTILE mcp-malformed unanswered={unanswered} wrong_error={wrong} dead_after={dead_after} exited={} cases={} tools_after={listed}",
        usize::from(!alive),
        cases.len()
    );
    assert_eq!(unanswered, 0, "a malformed message went unanswered");
    assert_eq!(wrong, 0, "a malformed message got the wrong error");
    assert_eq!(dead_after, 0, "the server stopped serving after a malformed message");
    assert!(alive && listed > 0, "the server still lists its tools: {tools}");
    // Closing stdin ends the session cleanly.
    drop(mcp.stdin.take());
    assert!(
        wait_until(SECS(10), || mcp.child.try_wait().unwrap().is_some()),
        "corral mcp exits at the end of its input"
    );
}

/// A tools/call of `spawn_agent`; the result (a tool error has `isError`).
fn spawn_agent(mcp: &mut Mcp, id: i64, role: &str, task: &str) -> Value {
    let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "spawn_agent", "arguments": {"role": role, "task": task}}});
    mcp.send(call.to_string().as_bytes());
    let r = mcp.next().expect("spawn_agent is answered");
    assert_eq!(r["id"], id, "{r}");
    r["result"].clone()
}

fn initialized(ws: &Ws) -> Mcp {
    let mut mcp = Mcp::start(ws);
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "hostile", "version": "1"}}});
    mcp.send(init.to_string().as_bytes());
    mcp.next().expect("initialize is answered");
    mcp.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    mcp
}

const SHELL_ROLES: &str = r#"
[roles.SHELLY]
command = ["sh", "-c", "echo {task} > said.txt"]
[roles.LOGIN]
command = ["env", "LC_ALL=C", "bash", "-lc", "echo '{context}' > said.txt"]
[roles.SAFE]
command = ["sh", "-c", "printf '%s' \"$1\" > said.txt", "sh", "{task}"]
"#;

#[test]
fn shell_templates_with_placeholders_are_refused_over_mcp() {
    let ws = Ws::with_config(Some(&format!("{RELAXED}{SHELL_ROLES}")));
    let mut mcp = initialized(&ws);
    let task = "hi; touch PWNED; $(touch PWNED2)";
    let mut refused = 0;
    for (n, role) in ["SHELLY", "LOGIN"].iter().enumerate() {
        let r = spawn_agent(&mut mcp, 10 + n as i64, role, task);
        let text = r["content"][0]["text"].as_str().unwrap_or_default().to_string();
        assert_eq!(r["isError"], true, "{role} is refused: {r}");
        for part in ["shell code", "allow_shell_templates = true", "[mcp]", role] {
            assert!(text.contains(part), "{role}: {part:?} missing from: {text}");
        }
        refused += 1;
    }
    // The same text as an argument of its own is data.
    let r = spawn_agent(&mut mcp, 20, "SAFE", task);
    assert_ne!(r["isError"], true, "SAFE runs: {r}");
    let id = r["structuredContent"]["agentId"].as_str().unwrap().to_string();
    ws.wait_state(&id, &["complete"], SECS(20));
    let said = std::fs::read_to_string(ws.path().join("said.txt")).unwrap_or_default();
    let ran = ["PWNED", "PWNED2"].iter().filter(|f| ws.path().join(f).exists()).count();
    println!("HOSTILE mcp-shell-templates unanswered=0 refused={refused} task_ran_as_code={ran}");
    assert_eq!(said, task, "the task reached the agent as one argument");
    assert_eq!(ran, 0, "the task ran as shell code");
}

#[test]
fn shell_templates_run_when_the_workspace_allows_them() {
    let ws = Ws::with_config(Some(&format!("{RELAXED}\n[mcp]\nallow_shell_templates = true\n{SHELL_ROLES}")));
    let mut mcp = initialized(&ws);
    let r = spawn_agent(&mut mcp, 10, "SHELLY", "allowed");
    assert_ne!(r["isError"], true, "SHELLY runs when allowed: {r}");
    let id = r["structuredContent"]["agentId"].as_str().unwrap().to_string();
    ws.wait_state(&id, &["complete"], SECS(20));
    assert_eq!(std::fs::read_to_string(ws.path().join("said.txt")).unwrap().trim(), "allowed");
}
