//! A command in a real terminal: a detached tmux session on a server of its own, read by
//! capturing the pane and driven by sending keys; the server is killed when dropped.

use std::process::{Command, Stdio};

pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs the shell command `cmd` in a `w` x `h` terminal on the tmux server `socket`.
    pub fn start(socket: String, cmd: &str, w: u16, h: u16) -> Self {
        let st = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-s", "m", "-x", &w.to_string(), "-y", &h.to_string(), cmd])
            .env_remove("TMUX")
            .status()
            .expect("tmux is installed (./scripts/test.sh installs it)");
        assert!(st.success());
        Self { socket }
    }

    pub fn screen(&self) -> String {
        let o = Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p", "-t", "m"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn keys(&self, keys: &[&str]) {
        for k in keys {
            Command::new("tmux").args(["-L", &self.socket, "send-keys", "-t", "m", k]).status().unwrap();
        }
    }

    pub fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", "m"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The terminal's title as the command left it.
    pub fn title(&self) -> String {
        let o = Command::new("tmux")
            .args(["-L", &self.socket, "display-message", "-p", "-t", "m", "#{pane_title}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn resize(&self, w: u16, h: u16) {
        let st = Command::new("tmux")
            .args(["-L", &self.socket, "resize-window", "-t", "m", "-x", &w.to_string(), "-y", &h.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).stderr(Stdio::null()).status();
    }
}
