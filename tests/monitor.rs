//! `corral monitor` driven in a real terminal (tmux): agents appear, progress moves, the
//! kill key kills, and a resize to 80x24 does not break it.

mod common;
use common::*;
use std::process::Command;

struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(ws: &Ws, w: u16, h: u16) -> Self {
        let socket = format!("corral-test-{}", ws.path().file_name().unwrap().to_string_lossy());
        let path = format!("{}:{}", bin().parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
        let cmd = format!("cd {} && PATH={path} corral monitor", ws.path().display());
        let st = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-s", "m", "-x", &w.to_string(), "-y", &h.to_string(), &cmd])
            .env_remove("TMUX")
            .status()
            .expect("tmux is installed (./scripts/test.sh installs it)");
        assert!(st.success());
        Self { socket }
    }
    fn screen(&self) -> String {
        let o = Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p", "-t", "m"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn keys(&self, keys: &[&str]) {
        for k in keys {
            Command::new("tmux").args(["-L", &self.socket, "send-keys", "-t", "m", k]).status().unwrap();
        }
    }
    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", "m"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
    fn resize(&self, w: u16, h: u16) {
        let st = Command::new("tmux")
            .args(["-L", &self.socket, "resize-window", "-t", "m", "-x", &w.to_string(), "-y", &h.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ =
            Command::new("tmux").args(["-L", &self.socket, "kill-server"]).stderr(std::process::Stdio::null()).status();
    }
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
    let t = Tmux::new(&ws, 120, 30);
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
    // select the fourth row and press the kill key
    t.keys(&["Down", "Down", "Down", "k"]);
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
    let t = Tmux::new(&ws, 120, 30);
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
