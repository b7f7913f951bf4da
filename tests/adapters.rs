//! Agent CLI adapters end to end: scripted fake agents named `claude` and `codex` print the
//! CLIs' own line shapes (tests/fixtures/adapters), and corral reads them as it would the
//! real CLIs' output.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const FAST: &str = r#"
[defaults]
backoff = { initial = "200ms", coefficient = 2.0 }
[health]
max_concurrent = 50
breaker_failures = 0
"#;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adapters").join(format!("{name}.jsonl"))
}

/// A fake CLI at `<ws>/bin/<program>`: prints the fixture `fixture` line by line, then runs
/// `then` (shell) and exits with its status.
fn fake_cli(ws: &Ws, program: &str, fixture_name: &str, then: &str) -> String {
    let dir = ws.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(program);
    let script = format!(
        "#!/bin/sh\nwhile IFS= read -r l; do printf '%s\\n' \"$l\"; done < '{}'\n{then}\n",
        fixture(fixture_name).display()
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn the_program_name_chooses_the_adapter_and_the_flag_overrides_it() {
    let ws = Ws::with_config(Some(FAST));
    let claude = fake_cli(&ws, "claude", "claude-success", "exit 0");
    let codex = fake_cli(&ws, "codex", "codex-success", "exit 0");
    let a = ws.spawn("W", &[&claude, "-p", "x"]);
    let b = ws.spawn("W", &[&codex, "exec", "--json"]);
    let c = ws.spawn("W", &["sh", "-c", "true"]);
    let d = ws.ok(&["spawn", "--role", "W", "--task", "t", "--adapter", "none", "--", &claude]).trim().to_string();
    let e = ws
        .ok(&["spawn", "--role", "W", "--task", "t", "--adapter", "codex", "--", "sh", "-c", "true"])
        .trim()
        .to_string();
    for (id, want) in [(&a, "claude-code"), (&b, "codex"), (&c, "none"), (&d, "none"), (&e, "codex")] {
        assert_eq!(ws.agent(id)["adapter"], want, "{id}");
    }
    let bad = ws.run(&["spawn", "--role", "W", "--task", "t", "--adapter", "gemini", "--", "true"]);
    assert_eq!(bad.status.code(), Some(2), "an unknown adapter is bad input");
}

#[test]
fn a_role_names_its_adapter_and_a_bad_name_is_a_config_error() {
    let ws = Ws::with_config(Some(&format!("{FAST}\n[roles.W]\nadapter = \"claude-code\"\n")));
    let id = ws.spawn("W", &["sh", "-c", "true"]);
    assert_eq!(ws.agent(&id)["adapter"], "claude-code");
    let ws = Ws::with_config(Some("[roles.W]\nadapter = \"gemini\"\n"));
    let o = ws.run(&["spawn", "--role", "W", "--task", "t", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("corral.toml") && err.contains("claude-code, codex, none"), "{err}");
}
