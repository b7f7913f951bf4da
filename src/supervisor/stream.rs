//! An adapter agent's stream as its watcher (shim or adopter) reads it: the parser sees
//! exactly what the log gets, and what it makes of it goes to `run/<id>.<n>.obs` for the
//! supervisor. The file's first line is a fixed-width slot with when progress (a model turn,
//! a tool call; not an API retry) was last seen, rewritten in place at most every
//! [`relay::STAMP_EVERY_MS`]; the second is the folded [`Summary`] (session, usage, result,
//! limit), rewritten in place only when it changes (a few times per run). A reader that
//! catches a rewrite half done sees a line that does not parse and takes nothing from it;
//! the last read, after the watcher is gone, is whole.
//!
//! The watcher also keeps two limits from here, so they hold with no supervisor running:
//! a process lingering for `result_grace` after its final result, and the role's budgets.

use super::relay::STAMP_EVERY_MS;
use super::shim::data_root;
use crate::adapter::{Adapter, Observation, Parser, Summary, Usage};
use crate::policy::role::RolePolicy;
use crate::policy::usage;
use crate::protocol::{fsio, time};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SLOT_PREFIX: &str = "{\"progress\":\"";
const SLOT_DIGITS: usize = 20;
const SLOT_LINE: &str = "{\"progress\":\"00000000000000000000\"}\n";

/// Longest summary line a reader takes.
const MAX_SUMMARY: usize = 64 * 1024;

/// The observation file of the attempt whose run file is `run`.
pub fn obs_path(run: &Path) -> PathBuf {
    run.with_extension("obs")
}

/// What the watcher needs to judge the stream by itself.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamArgs {
    pub adapter: Adapter,
    #[serde(default)]
    pub result_grace_ms: u64,
    /// The role's policy, for its budgets and token prices.
    #[serde(default)]
    pub policy: Option<RolePolicy>,
    /// What the session had reported before this attempt (a resumed session).
    #[serde(default)]
    pub usage_before: Option<Usage>,
}

impl StreamArgs {
    /// What the watcher of `agent`'s current attempt needs (`None`: plain output).
    pub fn of(agent: &crate::policy::agent::Agent) -> Option<Self> {
        let spec = &agent.spec;
        (!spec.adapter.is_none()).then(|| Self {
            adapter: spec.adapter,
            result_grace_ms: spec.policy.result_grace_ms,
            policy: Some(spec.policy.clone()),
            usage_before: crate::policy::lifecycle::session_usage_before(agent),
        })
    }
}

pub struct Observer {
    parser: Parser,
    pub summary: Summary,
    file: Option<File>,
    last_stamp: u64,
    /// When the CLI's final result was first seen (monotonic ms).
    pub result_at: Option<u64>,
    pub result_grace_ms: u64,
    /// Why the attempt is over its budget, once it is.
    pub over_budget: Option<String>,
    args: StreamArgs,
}

impl Observer {
    /// `None` for plain output. A file that cannot be made costs the supervisor the
    /// observations, not the agent its run.
    pub fn open(run: &Path, args: StreamArgs) -> Option<Self> {
        let parser = args.adapter.parser()?;
        let path = obs_path(run);
        let file = match fsio::open_write_replacing(data_root(&path), &path, fsio::Mode::Update) {
            Ok((f, _)) => {
                let _ = f.set_len(0);
                let _ = f.write_all_at(SLOT_LINE.as_bytes(), 0);
                Some(f)
            }
            Err(e) => {
                crate::elog!("corral shim: cannot write {}: {e}", path.display());
                None
            }
        };
        Some(Self {
            parser,
            summary: Summary::default(),
            file,
            last_stamp: 0,
            result_at: None,
            result_grace_ms: args.result_grace_ms,
            over_budget: None,
            args,
        })
    }

    /// The observer of an attempt whose first watcher (its shim) is gone: it goes on from
    /// what the observation file records and the line the stream was in the middle of
    /// (`pending`: what the log holds after its last line break), and keeps writing the
    /// same file. `None` for plain output.
    pub fn resume(run: &Path, args: StreamArgs, pending: &[u8]) -> Option<Self> {
        args.adapter.parser()?;
        let before = StreamInfo::read(run);
        let path = obs_path(run);
        let file = match fsio::open_write_replacing(data_root(&path), &path, fsio::Mode::Update) {
            Ok((f, _)) => {
                let mut head = [0u8; SLOT_PREFIX.len()];
                if f.read_exact_at(&mut head, 0).is_err() || head != SLOT_PREFIX.as_bytes() {
                    let _ = f.set_len(0);
                    let _ = f.write_all_at(SLOT_LINE.as_bytes(), 0);
                }
                Some(f)
            }
            Err(e) => {
                crate::elog!("corral daemon: cannot write {}: {e}", path.display());
                None
            }
        };
        let summary = before.summary.unwrap_or_default();
        let parser = Parser::resume(args.adapter, &summary, pending);
        let now = time::mono_ms();
        let mut o = Self {
            parser,
            // A result already given: the grace for lingering after it starts again now.
            result_at: summary.result.is_some().then_some(now),
            summary,
            file,
            last_stamp: 0,
            result_grace_ms: args.result_grace_ms,
            over_budget: None,
            args,
        };
        o.check_budget();
        o.write_summary();
        Some(o)
    }

    /// Takes in what the agent printed.
    pub fn observe(&mut self, bytes: &[u8]) {
        let now = time::mono_ms();
        let mut changed = false;
        let mut progress = false;
        for o in self.parser.feed(bytes) {
            match &o {
                Observation::Progress { .. } => progress = true,
                Observation::Result(_) => {
                    self.result_at.get_or_insert(now);
                }
                _ => {}
            }
            changed |= self.summary.add(&o);
            if let Observation::RateLimited { reset, .. } = &o
                && let Some(l) = self.summary.rate_limited.as_mut()
            {
                let wall = jiff::Timestamp::now();
                let offset = jiff::tz::TimeZone::system().to_offset(wall).seconds();
                l.until_ms = reset.map(|r| r.until_ms(wall.as_millisecond(), offset));
            }
        }
        if progress && now >= self.last_stamp + STAMP_EVERY_MS {
            self.last_stamp = now;
            if let Some(f) = &self.file {
                let _ = f.write_all_at(format!("{now:020}").as_bytes(), SLOT_PREFIX.len() as u64);
            }
        }
        if changed {
            self.check_budget();
            self.write_summary();
        }
    }

    fn check_budget(&mut self) {
        if self.over_budget.is_some() {
            return;
        }
        let (Some(p), Some(u)) = (&self.args.policy, &self.summary.usage) else { return };
        let spent = usage::attempt_share(u, self.args.usage_before.as_ref(), p.token_prices);
        self.over_budget = usage::over_budget(p, &spent);
    }

    fn write_summary(&mut self) {
        let Some(f) = &self.file else { return };
        let Ok(mut line) = serde_json::to_vec(&self.summary) else { return };
        line.push(b'\n');
        let at = SLOT_LINE.len() as u64;
        if f.write_all_at(&line, at).is_ok() {
            let _ = f.set_len(at + line.len() as u64);
        }
    }

    /// When the process must be stopped for lingering after its result (monotonic ms).
    pub fn linger_deadline(&self) -> Option<u64> {
        self.result_at.filter(|_| self.result_grace_ms > 0).map(|t| t.saturating_add(self.result_grace_ms))
    }
}

/// The line an attempt's stream was in the middle of when its watcher went away: what its
/// log holds after the last line break (corral's own lines in the log end with one). Off
/// the supervisor's loop: it reads up to a line's bound from the log's end.
pub fn unfinished_line(log: &Path) -> Vec<u8> {
    let Ok(f) = fsio::open_read(data_root(log), log) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let take = len.min(crate::adapter::MAX_LINE as u64 + 1);
    let mut buf = vec![0u8; take as usize];
    if f.read_exact_at(&mut buf, len - take).is_err() {
        return Vec::new();
    }
    match buf.iter().rposition(|b| *b == b'\n') {
        Some(i) => buf.split_off(i + 1),
        // No line break in a whole line's bound: a line too long to read, skipped anyway.
        None => buf,
    }
}

/// What an observation file says: when progress was last seen, and the summary.
#[derive(Debug, Default)]
pub struct StreamInfo {
    pub progress: Option<u64>,
    pub summary: Option<Summary>,
}

impl StreamInfo {
    pub fn read(run: &Path) -> Self {
        let path = obs_path(run);
        let Ok(bytes) = fsio::read(data_root(&path), &path, (SLOT_LINE.len() + MAX_SUMMARY) as u64) else {
            return Self::default();
        };
        let progress = bytes
            .strip_prefix(SLOT_PREFIX.as_bytes())
            .and_then(|b| b.get(..SLOT_DIGITS))
            .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u64>().ok())
            .filter(|v| *v > 0);
        let summary = bytes
            .get(SLOT_LINE.len()..)
            .and_then(|rest| rest.split(|b| *b == b'\n').next())
            .and_then(|line| serde_json::from_slice(line).ok());
        Self { progress, summary }
    }
}
