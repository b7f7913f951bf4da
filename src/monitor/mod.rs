//! `corral monitor`'s model: what the dashboard shows and what a key press asks for. Pure:
//! views come in from the supervisor, commands go out; drawing lives in `ui`, the terminal
//! and the socket in `cli::monitor`.

pub mod ui;

use crate::ipc::{AgentView, HealthView, ShowView};
use crate::policy::agent::Escalation;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Kill(String),
    Retry(String),
    Tell(String, String),
    Resolve(u64, String),
    Quit,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Typing text for a command; `what` says which.
    Text { what: Prompt, buf: String },
    /// Asking whether to kill this agent: `y` does, any other key cancels.
    ConfirmKill(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prompt {
    Tell,
    Filter,
    Resolve,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Key {
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    Backspace,
    Char(char),
}

#[derive(Default)]
pub struct Model {
    pub agents: HashMap<String, AgentView>,
    /// Spawn order.
    pub order: Vec<String>,
    pub health: Option<HealthView>,
    pub escalations: Vec<Escalation>,
    pub selected: usize,
    pub role_filter: Option<String>,
    pub input: Option<Input>,
    pub message: String,
    pub redraws: u64,
    /// The detail pane (attempts, findings, why it waits) is shown.
    pub detail_pane: bool,
    /// The log pane (the tail of the selected agent's log) is shown.
    pub log_pane: bool,
    /// The help overlay is shown; any key closes it.
    pub help: bool,
    /// What the supervisor last said about the selected agent (`show`), or why it could not.
    pub detail: Option<Result<ShowView, String>>,
    /// The last lines of the selected agent's log, already escaped: whose, and the lines.
    pub log: Option<(String, Vec<String>)>,
}

/// Every key the dashboard knows, for the help overlay (and the README).
pub const KEYS: &[(&str, &str)] = &[
    ("up/down", "select an agent (PgUp/PgDn by 10, Home/End)"),
    ("Enter, d", "show or hide the detail pane"),
    ("l", "show or hide the log pane"),
    ("k", "kill the selected agent (asks y/N)"),
    ("r", "retry the selected agent"),
    ("t", "tell the selected agent something"),
    ("e", "resolve its (else the oldest) open escalation"),
    ("f", "filter by role (empty: all)"),
    ("?", "this help; any key closes it"),
    ("q, Esc", "quit"),
];

/// Whether an agent waits on a human or failed: where the selection starts.
pub fn needs_attention(v: &AgentView) -> bool {
    v.needs_human || matches!(v.status.as_str(), "escalated" | "failed" | "timed_out")
}

impl Model {
    /// Replaces (or adds) the views of some agents.
    pub fn apply(&mut self, views: Vec<AgentView>) {
        for v in views {
            if !self.agents.contains_key(&v.agent_id) {
                self.order.push(v.agent_id.clone());
            }
            self.agents.insert(v.agent_id.clone(), v);
        }
    }

    /// A full snapshot: also drops agents that no longer exist.
    pub fn replace_all(&mut self, views: Vec<AgentView>) {
        self.order = views.iter().map(|v| v.agent_id.clone()).collect();
        self.agents = views.into_iter().map(|v| (v.agent_id.clone(), v)).collect();
    }

    pub fn visible(&self) -> Vec<&AgentView> {
        self.order
            .iter()
            .filter_map(|id| self.agents.get(id))
            .filter(|v| self.role_filter.as_deref().is_none_or(|r| v.role == r))
            .collect()
    }

    pub fn selected_agent(&self) -> Option<&AgentView> {
        self.visible().get(self.selected).copied()
    }

    pub fn counts(&self) -> Vec<(String, usize)> {
        let mut c: Vec<(String, usize)> = Vec::new();
        for v in self.agents.values() {
            match c.iter_mut().find(|(s, _)| *s == v.status) {
                Some((_, n)) => *n += 1,
                None => c.push((v.status.clone(), 1)),
            }
        }
        c.sort();
        c
    }

    /// Puts the selection on the newest agent needing attention (the one that ended last,
    /// else the one spawned last), else on the first row.
    pub fn select_attention(&mut self) {
        let visible = self.visible();
        self.selected = visible
            .iter()
            .enumerate()
            .filter(|(_, v)| needs_attention(v))
            .max_by(|(i, a), (j, b)| a.ended_at.cmp(&b.ended_at).then(i.cmp(j)))
            .map_or(0, |(i, _)| i);
    }

    /// The id of the selected agent.
    pub fn selected_id(&self) -> Option<String> {
        self.selected_agent().map(|v| v.agent_id.clone())
    }

    /// Handles a key; returns what should be sent to the supervisor, if anything.
    pub fn key(&mut self, k: Key) -> Option<Command> {
        if self.help {
            self.help = false;
            return None;
        }
        if let Some(Input::ConfirmKill(id)) = &self.input {
            let id = id.clone();
            self.input = None;
            if k == Key::Char('y') {
                return Some(Command::Kill(id));
            }
            self.message = format!("kill of {id} cancelled");
            return None;
        }
        if let Some(Input::Text { what, buf }) = &mut self.input {
            match k {
                Key::Esc => self.input = None,
                Key::Backspace => {
                    buf.pop();
                }
                Key::Char(c) => buf.push(c),
                Key::Enter => {
                    let (what, text) = (*what, buf.trim().to_string());
                    self.input = None;
                    return self.submit(what, text);
                }
                _ => {}
            }
            return None;
        }
        let n = self.visible().len();
        let sel = self.selected_agent().map(|v| v.agent_id.clone());
        match k {
            Key::Up => self.selected = self.selected.saturating_sub(1),
            Key::Down => self.selected = (self.selected + 1).min(n.saturating_sub(1)),
            Key::PageUp => self.selected = self.selected.saturating_sub(10),
            Key::PageDown => self.selected = (self.selected + 10).min(n.saturating_sub(1)),
            Key::Home => self.selected = 0,
            Key::End => self.selected = n.saturating_sub(1),
            Key::Char('q') | Key::Esc => return Some(Command::Quit),
            Key::Char('k') => self.input = sel.map(Input::ConfirmKill),
            Key::Char('?') => self.help = true,
            Key::Enter | Key::Char('d') => self.detail_pane = !self.detail_pane,
            Key::Char('l') => self.log_pane = !self.log_pane,
            Key::Char('r') => return sel.map(Command::Retry),
            Key::Char('t') if sel.is_some() => {
                self.input = Some(Input::Text { what: Prompt::Tell, buf: String::new() })
            }
            Key::Char('f') => self.input = Some(Input::Text { what: Prompt::Filter, buf: String::new() }),
            Key::Char('e') if self.escalations.iter().any(|e| e.is_open()) => {
                self.input = Some(Input::Text { what: Prompt::Resolve, buf: String::new() })
            }
            _ => {}
        }
        None
    }

    fn submit(&mut self, what: Prompt, text: String) -> Option<Command> {
        match what {
            Prompt::Filter => {
                self.role_filter = if text.is_empty() { None } else { Some(text) };
                self.selected = 0;
                None
            }
            Prompt::Tell if !text.is_empty() => self.selected_agent().map(|v| Command::Tell(v.agent_id.clone(), text)),
            // The selected agent's open escalation, else the oldest open one.
            Prompt::Resolve => {
                let sel = self.selected_agent().map(|v| v.agent_id.clone());
                let open = || self.escalations.iter().filter(|e| e.is_open());
                let e = open().find(|e| Some(e.agent_id.as_str()) == sel.as_deref()).or_else(|| open().next())?;
                Some(Command::Resolve(e.n, text))
            }
            _ => None,
        }
    }

    pub fn clamp_selection(&mut self) {
        let n = self.visible().len();
        if self.selected >= n {
            self.selected = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, role: &str, status: &str) -> AgentView {
        serde_json::from_value(serde_json::json!({
            "agentId": id, "role": role, "task": "t", "status": status, "attempt": 1, "maxRetries": 1,
            "anomalies": [], "spawnedAt": "t", "cwd": "/",
        }))
        .unwrap()
    }

    #[test]
    fn keys_select_filter_and_command() {
        let mut m = Model::default();
        m.apply(vec![view("a1", "A", "running"), view("b1", "B", "running"), view("a2", "A", "queued")]);
        // kill asks first: anything but `y` cancels
        assert_eq!(m.key(Key::Char('k')), None);
        assert_eq!(m.input, Some(Input::ConfirmKill("a1".into())));
        assert_eq!(m.key(Key::Char('n')), None);
        assert_eq!(m.input, None);
        assert!(m.message.contains("cancelled"), "{}", m.message);
        m.key(Key::Char('k'));
        assert_eq!(m.key(Key::Char('y')), Some(Command::Kill("a1".into())));
        m.key(Key::Down);
        assert_eq!(m.key(Key::Char('r')), Some(Command::Retry("b1".into())));
        m.key(Key::Char('f'));
        for c in "A".chars() {
            m.key(Key::Char(c));
        }
        m.key(Key::Enter);
        assert_eq!(m.visible().len(), 2);
        m.key(Key::End);
        assert_eq!(m.selected_agent().unwrap().agent_id, "a2");
        m.key(Key::Char('t'));
        for c in "go on".chars() {
            m.key(Key::Char(c));
        }
        assert_eq!(m.key(Key::Enter), Some(Command::Tell("a2".into(), "go on".into())));
        assert_eq!(m.key(Key::Char('q')), Some(Command::Quit));
        // typing mode swallows command keys
        m.key(Key::Char('f'));
        assert_eq!(m.key(Key::Char('q')), None);
        m.key(Key::Esc);
        assert_eq!(m.input, None);
    }

    #[test]
    fn help_is_closed_by_any_key_and_panes_toggle() {
        let mut m = Model::default();
        m.apply(vec![view("a1", "A", "running")]);
        m.key(Key::Char('?'));
        assert!(m.help);
        // the key that closes the help does nothing else
        assert_eq!(m.key(Key::Char('q')), None);
        assert!(!m.help);
        m.key(Key::Char('d'));
        m.key(Key::Char('l'));
        assert!(m.detail_pane && m.log_pane);
        m.key(Key::Enter);
        assert!(!m.detail_pane);
    }

    #[test]
    fn selection_starts_at_the_newest_agent_needing_attention() {
        let mut m = Model::default();
        let mut failed = view("a2", "A", "failed");
        failed.ended_at = Some("2026-01-01T10:00:00Z".into());
        let mut escalated = view("a3", "A", "escalated");
        escalated.ended_at = Some("2026-01-01T11:00:00Z".into());
        let mut blocked = view("a1", "A", "blocked");
        blocked.needs_human = true;
        m.apply(vec![blocked, escalated, failed, view("a4", "A", "running")]);
        m.select_attention();
        assert_eq!(m.selected_id().as_deref(), Some("a3"));
        let mut m = Model::default();
        m.apply(vec![view("a1", "A", "running"), view("a2", "A", "complete")]);
        m.selected = 1;
        m.select_attention();
        assert_eq!(m.selected, 0);
    }
}
