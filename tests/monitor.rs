//! `corral monitor` driven in a real terminal (tmux): agents appear, progress moves, the
//! kill key asks and then kills, a resize to 80x24 does not break it, the detail and log
//! panes follow the selected agent, `?` lists the keys, and ids stay whole at 80 columns.

mod common;
use common::tmux::Tmux;
use common::*;

/// `corral monitor` in the workspace, in a `w` x `h` terminal.
fn monitor(ws: &Ws, w: u16, h: u16) -> Tmux {
    let socket = format!("corral-test-{}", ws.path().file_name().unwrap().to_string_lossy());
    let path = format!("{}:{}", bin().parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    Tmux::start(socket, &format!("cd {} && PATH={path} corral monitor", ws.path().display()), w, h)
}

fn row<'a>(screen: &'a str, id: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.contains(id))
}

#[test]
fn monitor_shows_progress_kills_and_survives_resize() {
    let ws = Ws::new();
    let steps = "for i in 1 2 3 4 5 6 7 8 9; do corral report --status active --progress 0.$i --phase build --milestone m$i; sleep 0.4; done; sleep 30";
    let ids: Vec<String> = (0..3).map(|_| ws.spawn("W", &["sh", "-c", steps])).collect();
    let victim = ws.spawn("SLEEPER", &["sleep", "300"]);
    let t = monitor(&ws, 120, 30);
    assert!(
        wait_until(SECS(10), || ids.iter().chain([&victim]).all(|id| t.screen().contains(id.as_str()))),
        "{}",
        t.screen()
    );
    // progress moves on screen without any key press
    let first = row(&t.screen(), &ids[0]).unwrap().to_string();
    assert!(
        wait_until(SECS(10), || row(&t.screen(), &ids[0]).is_some_and(|r| r != first && r.contains('%'))),
        "{}",
        t.screen()
    );
    assert!(t.screen().contains("capacity"), "{}", t.screen());
    // select the fourth row and press the kill key: it asks first, and `n` cancels
    t.keys(&["Down", "Down", "Down", "k"]);
    let question = format!("kill {victim} ? y/N");
    assert!(wait_until(SECS(5), || t.screen().contains(&question)), "no confirmation asked:\n{}", t.screen());
    assert_eq!(ws.agent(&victim)["status"], "running", "killed before the answer");
    t.keys(&["n"]);
    assert!(wait_until(SECS(5), || t.screen().contains("cancelled")), "{}", t.screen());
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(ws.agent(&victim)["status"], "running", "`n` killed it");
    t.keys(&["k"]);
    assert!(wait_until(SECS(5), || t.screen().contains(&question)), "{}", t.screen());
    t.keys(&["y"]);
    assert!(
        wait_until(SECS(10), || row(&t.screen(), &victim).is_some_and(|r| r.contains("killed"))),
        "victim not shown killed:\n{}",
        t.screen()
    );
    assert_eq!(ws.agent(&victim)["status"], "killed");
    for id in &ids {
        assert_ne!(ws.agent(id)["status"], "killed", "the kill key hit the wrong agent");
    }
    t.resize(80, 24);
    assert!(wait_until(SECS(5), || {
        let s = t.screen();
        s.lines().count() <= 24 && s.contains("corral monitor") && s.contains(&ids[0])
    }));
    assert!(t.alive(), "monitor died on resize");
    t.keys(&["q"]);
    assert!(wait_until(SECS(5), || !t.alive()), "q did not quit");
}

#[test]
fn monitor_rides_out_a_killed_supervisor() {
    let ws = Ws::new();
    let steps = "for i in 1 2 3 4 5 6 7 8 9; do corral report --status active --progress 0.$i --milestone m$i; sleep 0.5; done; sleep 30";
    let first = ws.spawn("W", &["sh", "-c", steps]);
    let t = monitor(&ws, 120, 30);
    assert!(wait_until(SECS(10), || t.screen().contains(first.as_str())), "{}", t.screen());
    let pid = ws.daemon_pid();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(SECS(5), || !alive(pid)), "supervisor {pid} survived SIGKILL");
    // A new supervisor (started by this spawn): the monitor follows it without a key press,
    // shows the agent spawned after the restart, and the first agent's progress goes on.
    let second = ws.spawn("W", &["sleep", "300"]);
    assert!(ws.daemon_pid() != pid);
    assert!(
        wait_until(SECS(15), || t.screen().contains(second.as_str())),
        "agent spawned after the restart not shown:\n{}",
        t.screen()
    );
    let before = row(&t.screen(), &first).unwrap().to_string();
    assert!(
        wait_until(SECS(10), || row(&t.screen(), &first).is_some_and(|r| r != before)),
        "the first agent's row froze after the restart:\n{}",
        t.screen()
    );
    assert!(t.alive(), "monitor died with its supervisor");
    t.keys(&["q"]);
    assert!(wait_until(SECS(5), || !t.alive()), "q did not quit");
}

fn spawn_with(ws: &Ws, role: &str, task: &str, extra: &[&str], cmd: &[&str]) -> String {
    let mut args = vec!["spawn", "--role", role, "--task", task];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(cmd);
    ws.ok(&args).trim().to_string()
}

#[test]
fn monitor_starts_at_the_agent_needing_a_human_and_shows_its_detail_and_log() {
    let ws = Ws::new();
    let calm = ws.spawn("W", &["sleep", "300"]);
    // Output with control sequences (a title change, a colour, a bell), then a finding and
    // a failure.
    let script = r#"printf 'plain-line-1\n\033]0;PWNED\007title\n\033[31mred\033[0m\n'; corral report --status active --finding "found the flaky test"; echo plain-line-last; exit 3"#;
    let task = "Fix the flaky test in the parser module; then run the whole suite twice and write down which tests were slow, with their times, in NOTES.md";
    let failed = spawn_with(&ws, "FIXER", task, &["--max-retries", "0"], &["sh", "-c", script]);
    // a crash with no retries left waits on a human
    ws.wait_state(&failed, &["escalated"], SECS(10));
    let later = ws.spawn("W", &["sleep", "300"]);
    // 45 rows: tall enough for the detail pane from the start.
    let t = monitor(&ws, 120, 45);
    assert!(wait_until(SECS(10), || t.screen().contains(later.as_str())), "{}", t.screen());
    // the selection starts at the failed agent (not the first row): its detail is shown
    let title = format!("detail {failed}");
    assert!(
        wait_until(SECS(10), || t.screen().contains(&title) && t.screen().contains("#1 exit 3")),
        "detail pane of the failed agent not shown:\n{}",
        t.screen()
    );
    let s = t.screen();
    assert!(s.contains("last findings:") && s.contains("- found the flaky test"), "findings missing:\n{s}");
    assert!(s.contains("status escalated") && s.contains("needs a human"), "{s}");
    assert!(s.contains("why crash failure needs a human"), "the reason it waits is missing:\n{s}");
    // the task in full, wrapped over lines (its last words are there, not cut with `~`)
    assert!(s.contains("in NOTES.md"), "task not shown in full:\n{s}");
    // `d` hides the pane, Enter shows it again
    t.keys(&["d"]);
    assert!(wait_until(SECS(5), || !t.screen().contains(&title)), "{}", t.screen());
    t.keys(&["Enter"]);
    assert!(wait_until(SECS(5), || t.screen().contains(&title)), "{}", t.screen());
    // the log pane: the agent's output, its control sequences shown escaped
    t.keys(&["l"]);
    let log_title = format!("log {failed}");
    assert!(
        wait_until(SECS(10), || t.screen().contains(&log_title) && t.screen().contains("plain-line-last")),
        "log pane not shown:\n{}",
        t.screen()
    );
    let s = t.screen();
    assert!(s.contains(r"\e]0;PWNED\x07title"), "title sequence not escaped:\n{s}");
    assert!(s.contains(r"\e[31mred\e[0m"), "colour sequence not escaped:\n{s}");
    assert!(!t.title().contains("PWNED"), "the agent retitled the terminal");
    // the selection moves: both panes follow it (a capture may catch a frame half-written,
    // so the screen is asked again once it looks right)
    t.keys(&["Home"]);
    let follows = |s: &str| {
        s.contains(&format!("detail {calm}")) && s.contains(&format!("log {calm}")) && !s.contains("plain-line-last")
    };
    assert!(wait_until(SECS(10), || follows(&t.screen())), "panes did not follow the selection:\n{}", t.screen());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let s = t.screen();
    assert!(follows(&s), "the panes went back to the other agent:\n{s}");
    t.keys(&["q"]);
    assert!(wait_until(SECS(5), || !t.alive()), "q did not quit");
}

#[test]
fn monitor_log_pane_follows_new_output() {
    let ws = Ws::new();
    let id = ws.spawn("W", &["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.3; done"]);
    let t = monitor(&ws, 100, 30);
    assert!(wait_until(SECS(10), || t.screen().contains(id.as_str())), "{}", t.screen());
    t.keys(&["l"]);
    assert!(wait_until(SECS(10), || t.screen().contains("tick-")), "{}", t.screen());
    let newest = |s: &str| s.lines().filter_map(|l| l.trim().strip_prefix("tick-")?.parse::<u32>().ok()).max();
    let first = newest(&t.screen()).unwrap();
    assert!(
        wait_until(SECS(10), || newest(&t.screen()).is_some_and(|n| n >= first + 3)),
        "the log pane does not follow the output:\n{}",
        t.screen()
    );
}

#[test]
fn monitor_help_lists_every_key_and_any_key_closes_it() {
    let ws = Ws::new();
    let id = ws.spawn("W", &["sleep", "300"]);
    let t = monitor(&ws, 80, 24);
    assert!(wait_until(SECS(10), || t.screen().contains(id.as_str())), "{}", t.screen());
    t.keys(&["?"]);
    assert!(wait_until(SECS(5), || t.screen().contains("any key closes")), "{}", t.screen());
    let s = t.screen();
    for what in ["detail pane", "log pane", "kill the selected agent", "retry", "tell", "resolve", "filter", "quit"] {
        assert!(s.contains(what), "help misses {what:?}:\n{s}");
    }
    // any key closes it, and does nothing else (`q` does not quit here)
    t.keys(&["q"]);
    assert!(wait_until(SECS(5), || !t.screen().contains("any key closes")), "{}", t.screen());
    assert!(t.alive(), "the key closing the help quit the monitor");
    t.keys(&["q"]);
    assert!(wait_until(SECS(5), || !t.alive()), "q did not quit");
}

#[test]
fn monitor_keeps_long_ids_whole_at_80_columns() {
    let ws = Ws::new();
    let task = "Implement the whole parser for the configuration language, with tests, docs and benchmarks";
    let ids: Vec<String> = (0..3).map(|_| spawn_with(&ws, "IMPLEMENTER", task, &[], &["sleep", "300"])).collect();
    let t = monitor(&ws, 80, 24);
    assert!(
        wait_until(SECS(10), || ids.iter().all(|id| t.screen().contains(id.as_str()))),
        "ids cut at 80 columns:\n{}",
        t.screen()
    );
    let s = t.screen();
    for id in &ids {
        let r = row(&s, id).unwrap();
        assert!(r.chars().count() <= 80, "{r}");
        // the task is shortened instead
        assert!(r.contains("Impl") && r.contains('~') && !r.contains("benchmarks"), "task not shortened: {r}");
    }
}

#[test]
fn monitor_detail_shows_the_cost_once_the_adapter_recorded_it() {
    let ws = Ws::new();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adapters/claude-success.jsonl");
    let script = format!("cat '{}'; sleep 300", fixture.display());
    let id = spawn_with(&ws, "W", "t", &["--adapter", "claude-code"], &["sh", "-c", &script]);
    assert!(wait_until(SECS(10), || ws.agent(&id)["costUsd"] == 0.0123), "{}", ws.agent(&id));
    let t = monitor(&ws, 120, 45);
    assert!(
        wait_until(SECS(10), || t.screen().contains("cost $0.0123  2500 tokens in, 52 out  2 turns")),
        "{}",
        t.screen()
    );
}

#[test]
fn monitor_detail_says_why_an_agent_is_queued() {
    let ws = Ws::new();
    ws.ok(&["pause"]);
    let id = ws.spawn("W", &["sleep", "300"]);
    assert_eq!(ws.agent(&id)["status"], "queued");
    let t = monitor(&ws, 100, 45);
    assert!(
        wait_until(SECS(10), || t.screen().contains(&format!("detail {id}"))
            && t.screen().contains("why paused (corral resume to release)")),
        "{}",
        t.screen()
    );
    // the detail follows the agent: released, it runs, and the pane says so
    ws.ok(&["resume"]);
    assert!(
        wait_until(SECS(10), || t.screen().contains("#1 running, pid")),
        "detail not refreshed after the agent started:\n{}",
        t.screen()
    );
}
