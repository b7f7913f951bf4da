//! Agent CLI adapters: what Claude Code (`--output-format stream-json`) and Codex
//! (`exec --json`) print, read incrementally and turned into typed observations for the
//! policy core. Pure: no clock, file or process in here. The shim feeds it the bytes it
//! relays; what it makes of them is the supervisor's business.
//!
//! A parser never fails: a line that is not JSON, not UTF-8, of an unknown shape, or longer
//! than [`MAX_LINE`] is skipped (a skipped line is still a heartbeat: the agent is alive).

mod claude;
mod codex;
pub mod limits;

use serde::{Deserialize, Serialize};

pub use limits::Reset;

/// Longest line a parser looks into. Longer lines (a huge tool result) are dropped as they
/// stream past, holding no more than this much in memory.
pub const MAX_LINE: usize = 1 << 20;

/// Which agent CLI an agent's command runs, and so how its output is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Adapter {
    ClaudeCode,
    Codex,
    /// Plain output: nothing is parsed.
    #[default]
    None,
}

impl Adapter {
    pub const NAMES: &'static [&'static str] = &["claude-code", "codex", "none"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "claude-code" | "claude" => Some(Self::ClaudeCode),
            "codex" => Some(Self::Codex),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClaudeCode => "claude-code",
            Self::Codex => "codex",
            Self::None => "none",
        }
    }

    /// The adapter a command's program name implies: `claude` and `codex` (any directory,
    /// also through `npx`/`node` wrappers named so), else none.
    pub fn from_program(argv0: &str) -> Self {
        let base = argv0.rsplit('/').next().unwrap_or(argv0);
        match base {
            "claude" => Self::ClaudeCode,
            "codex" => Self::Codex,
            _ => Self::None,
        }
    }

    pub fn is_none(self) -> bool {
        self == Self::None
    }

    /// For `skip_serializing_if`.
    pub fn is_none_ref(a: &Self) -> bool {
        a.is_none()
    }

    /// The provider whose limits the CLI runs into (admission is held per provider).
    pub fn provider(self) -> Option<&'static str> {
        match self {
            Self::ClaudeCode => Some("anthropic"),
            Self::Codex => Some("openai"),
            Self::None => None,
        }
    }

    /// A parser for this CLI's output (`None` for plain output).
    pub fn parser(self) -> Option<Parser> {
        match self {
            Self::None => None,
            other => Some(Parser::new(other)),
        }
    }
}

impl std::fmt::Display for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The command that continues session `id` with the same arguments: Claude Code takes
/// `--resume ID` (its `-p` prompt is the new turn), Codex `exec resume ID` (its last
/// argument is the new prompt). Other commands are left as they are.
pub fn resume_argv(adapter: Adapter, argv: &[String], id: &str) -> Vec<String> {
    let mut v = argv.to_vec();
    match adapter {
        Adapter::ClaudeCode => {
            if !v.iter().any(|a| a == "--resume" || a == "-r" || a.starts_with("--resume=")) {
                v.push("--resume".into());
                v.push(id.into());
            }
        }
        Adapter::Codex => {
            // `codex exec [OPTIONS] resume ID PROMPT`: exec's options come before the
            // subcommand (after it, `--sandbox` and the like are refused), the prompt last.
            if let Some(i) = v.iter().position(|a| a == "exec")
                && !v[i + 1..].iter().any(|a| a == "resume")
                && v.len() > i + 1
            {
                let at = v.len() - 1;
                v.splice(at..at, ["resume".to_string(), id.to_string()]);
            }
        }
        Adapter::None => {}
    }
    v
}

/// What kind of progress a stream event shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressKind {
    /// The model answered (a turn, a message).
    Turn,
    /// A tool was called or its result came back.
    ToolCall,
}

/// The CLI's final result of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// The run succeeded by the CLI's own account.
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_error_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_reason: Option<String>,
}

/// Tokens, cost and turns as the CLI reported them: totals of the run so far (for Claude
/// Code, of the whole session, a resumed one included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u32>,
    /// The figures cover the whole session (a resumed one's earlier runs too).
    #[serde(default)]
    pub session_totals: bool,
}

/// One thing a parser saw in the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Observation {
    /// The agent is alive (every stream event, also one that is not understood).
    Heartbeat,
    Progress {
        what: ProgressKind,
    },
    SessionId {
        id: String,
    },
    Usage(Usage),
    /// The CLI retries an API call by itself: alive, but not progress.
    ApiRetry {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
    },
    Result(RunResult),
    /// A rate or usage limit, with the reset when the message gave one.
    RateLimited {
        provider: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reset: Option<Reset>,
        message: String,
    },
}

/// Splits a byte stream into lines, whatever the chunks, holding at most [`MAX_LINE`].
#[derive(Debug, Default)]
struct Lines {
    buf: Vec<u8>,
    /// The current line went past the bound: its rest is dropped up to the next newline.
    skipping: bool,
}

impl Lines {
    /// Calls `each` with every complete line in `bytes` (without its newline); `None` for
    /// a line too long to look into.
    fn feed(&mut self, mut bytes: &[u8], mut each: impl FnMut(Option<&[u8]>)) {
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let (line, rest) = (&bytes[..i], &bytes[i + 1..]);
                    bytes = rest;
                    if self.skipping {
                        self.skipping = false;
                        each(None);
                    } else if self.buf.is_empty() {
                        if line.len() > MAX_LINE { each(None) } else { each(Some(line)) }
                    } else if self.buf.len() + line.len() > MAX_LINE {
                        self.buf.clear();
                        each(None);
                    } else {
                        self.buf.extend_from_slice(line);
                        let whole = std::mem::take(&mut self.buf);
                        each(Some(&whole));
                    }
                }
                None => {
                    if !self.skipping {
                        if self.buf.len() + bytes.len() > MAX_LINE {
                            self.buf.clear();
                            self.skipping = true;
                        } else {
                            self.buf.extend_from_slice(bytes);
                        }
                    }
                    bytes = &[];
                }
            }
        }
    }
}

/// The incremental parser of one CLI's output.
#[derive(Debug)]
pub struct Parser {
    kind: Adapter,
    lines: Lines,
    codex: codex::State,
}

impl Parser {
    pub fn new(kind: Adapter) -> Self {
        Self { kind, lines: Lines::default(), codex: codex::State::default() }
    }

    /// A parser that goes on where another one stopped: `before` is what that one had
    /// made of the stream (its folded summary), `pending` the line it was in the middle of
    /// (what came after the stream's last line break). What follows is read as the first
    /// parser would have read it.
    pub fn resume(kind: Adapter, before: &Summary, pending: &[u8]) -> Self {
        let mut p = Self::new(kind);
        if kind == Adapter::Codex {
            p.codex = codex::State::resume(before);
        }
        let _ = p.feed(pending);
        p
    }

    pub fn adapter(&self) -> Adapter {
        self.kind
    }

    /// Observations in the complete lines `bytes` finishes; a partial last line waits for
    /// the next call. Feeding a stream in any number of pieces gives what feeding it whole does.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Observation> {
        let mut out = Vec::new();
        let (kind, codex) = (self.kind, &mut self.codex);
        self.lines.feed(bytes, |line| {
            let value = line
                .and_then(|l| std::str::from_utf8(l).ok())
                .map(str::trim)
                .filter(|l| l.starts_with('{'))
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
            let Some(v) = value else {
                // Not a stream event (a stray line of stderr, a line too long to read):
                // the agent printed something, so it is alive.
                if line.is_none_or(|l| !l.iter().all(u8::is_ascii_whitespace)) {
                    out.push(Observation::Heartbeat);
                }
                return;
            };
            out.push(Observation::Heartbeat);
            match kind {
                Adapter::ClaudeCode => claude::line(&v, &mut out),
                Adapter::Codex => codex.line(&v, &mut out),
                Adapter::None => {}
            }
        });
        out
    }
}

/// A string field of a JSON object, if it is one.
fn s<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(serde_json::Value::as_str)
}

/// An unsigned field, from a number or a numeric string.
fn u(v: &serde_json::Value, key: &str) -> Option<u64> {
    match v.get(key)? {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        serde_json::Value::String(t) => t.trim().parse().ok(),
        _ => None,
    }
}

/// Text bounded for recording: results and messages can be long.
fn bounded(t: &str, max: usize) -> String {
    if t.len() <= max {
        return t.to_string();
    }
    let mut end = max;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &t[..end])
}

/// What an attempt's stream said, folded: the latest of each kind. This is what the shim
/// records for the supervisor, and what the attempt keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
    /// The last rate or usage limit seen: (provider, reset, message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited: Option<Limit>,
    /// API retries the CLI made by itself, and the status of the last one.
    #[serde(default)]
    pub api_retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_retry_status: Option<u16>,
}

/// A rate or usage limit as seen in the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<Reset>,
    pub message: String,
    /// When it ends (Unix ms), resolved by whoever saw it and knows the clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
}

impl Summary {
    /// Takes one observation in; true when it changed what is recorded (heartbeats and
    /// progress do not: they are stamps).
    pub fn add(&mut self, o: &Observation) -> bool {
        match o {
            Observation::Heartbeat | Observation::Progress { .. } => false,
            Observation::SessionId { id } => {
                let new = self.session_id.as_deref() != Some(id);
                self.session_id = Some(id.clone());
                new
            }
            Observation::Usage(u) => {
                self.usage = Some(*u);
                true
            }
            Observation::ApiRetry { status, .. } => {
                self.api_retries = self.api_retries.saturating_add(1);
                self.last_retry_status = *status;
                true
            }
            Observation::Result(r) => {
                self.result = Some(r.clone());
                true
            }
            Observation::RateLimited { provider, reset, message } => {
                self.rate_limited =
                    Some(Limit { provider: provider.clone(), reset: *reset, message: message.clone(), until_ms: None });
                true
            }
        }
    }
}

/// Longest result text kept.
pub const MAX_TEXT: usize = 4096;

#[cfg(test)]
mod tests;
