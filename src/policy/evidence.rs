//! Which evidence belongs to an attempt. Every decision about an attempt (classification,
//! the reason it records, a blocker) uses what that attempt itself wrote: findings it
//! added to the status file, output it printed, the handoff it wrote. What an earlier
//! attempt left behind never classifies a later one.

use super::agent::Attempt;
use serde_json::Value;

/// What an agent's files held just before an attempt started, taken by the shell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Baseline {
    /// Findings in the status file (0 when there was none).
    pub findings: usize,
    /// Length of the agent's log.
    pub log_len: u64,
}

/// The findings this attempt added. The status file keeps every attempt's findings, newest
/// last (the oldest may have been dropped, counted in `findingsDropped`), so the attempt's
/// own are those numbered from the count at its start. A file that has seen fewer than
/// that was written afresh (by the agent itself, not `corral report`): all of it is this
/// attempt's.
pub fn attempt_findings<'a>(attempt: &Attempt, findings: &'a [Value], dropped: u64) -> &'a [Value] {
    let before = attempt.findings_before.unwrap_or(0) as u64;
    let seen = dropped.saturating_add(findings.len() as u64);
    if seen < before {
        return findings;
    }
    let skip = usize::try_from(before.saturating_sub(dropped)).unwrap_or(usize::MAX).min(findings.len());
    &findings[skip..]
}

/// Where this attempt's output starts in the agent's log, and how much of its end the
/// classification rules see: at most `tail` bytes, never before the attempt's own start.
pub fn output_window(attempt: &Attempt, log_len: u64, tail: u64) -> (u64, u64) {
    let own_start = attempt.log_start.unwrap_or(0).min(log_len);
    let start = log_len.saturating_sub(tail).max(own_start);
    (start, log_len - start)
}

/// Whether the agent's handoff file `name` may be the attempt's: the one named for it, or
/// any written since the attempt started (not among those that were there before). The
/// newest of those speaks for the attempt.
pub fn handoff_is_attempts(attempt: &Attempt, name: &str) -> bool {
    attempt.handoff_file.file_name().and_then(|n| n.to_str()) == Some(name)
        || !attempt.handoffs_before.iter().any(|b| b == name)
}
