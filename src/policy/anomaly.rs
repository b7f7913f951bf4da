//! What is wrong with an agent right now, as `status`, `show` and the monitor flag it:
//! STALE, SLOW, BLOCKED, FAILED, NEEDS-HUMAN, UNREADABLE, RETRYING, QUEUED. One rule for
//! every face, a pure function of the agent, what its status file says and the time.

use super::agent::{Agent, AgentState, StopCause};
use crate::protocol::files::ReportedStatus;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Anomaly {
    /// The status file cannot be read.
    Unreadable,
    /// A reporting agent with no status write and no output for `heartbeat_timeout`.
    Stale,
    /// Reported content unchanged for half of `stall_timeout`: on its way to silent.
    Slow,
    Blocked,
    Failed,
    NeedsHuman {
        escalation: Option<u64>,
    },
    Retrying {
        in_ms: u64,
    },
    Queued {
        reason: String,
    },
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Unreadable => f.write_str("UNREADABLE"),
            Self::Stale => f.write_str("STALE"),
            Self::Slow => f.write_str("SLOW"),
            Self::Blocked => f.write_str("BLOCKED"),
            Self::Failed => f.write_str("FAILED"),
            Self::NeedsHuman { escalation: Some(n) } => write!(f, "NEEDS-HUMAN #{n}"),
            Self::NeedsHuman { escalation: None } => f.write_str("NEEDS-HUMAN"),
            Self::Retrying { in_ms } => write!(f, "RETRYING in {}s", in_ms.div_ceil(1000)),
            Self::Queued { reason } => write!(f, "QUEUED: {reason}"),
        }
    }
}

/// What the shell knows beside the agent record.
pub struct Seen<'a> {
    /// The agent's last reported status, if its status file was read.
    pub reported: Option<ReportedStatus>,
    pub unreadable: bool,
    /// Why it waits, computed now, when it is queued.
    pub queue_reason: Option<&'a str>,
}

pub fn anomalies(agent: &Agent, seen: &Seen, mono: u64) -> Vec<Anomaly> {
    let state = &agent.state;
    let p = &agent.spec.policy;
    let live = state.has_live_process();
    let liveness = agent.current().filter(|_| live).map(|c| &c.liveness);
    let mut out = Vec::new();
    if seen.unreadable {
        out.push(Anomaly::Unreadable);
    }
    let stale = matches!(state, AgentState::Stopping { cause: StopCause::Heartbeat, .. })
        || liveness.and_then(|l| l.last_heartbeat()).is_some_and(|hb| mono.saturating_sub(hb) > p.heartbeat_timeout_ms);
    if stale {
        out.push(Anomaly::Stale);
    }
    // Waiting on a blocker is not slowness: stall checks are off meanwhile.
    let slow = liveness.is_some_and(|l| l.waiting_on.is_none())
        && liveness.and_then(|l| l.last_change).is_some_and(|c| mono.saturating_sub(c) > p.stall_timeout_ms / 2);
    if slow {
        out.push(Anomaly::Slow);
    }
    if matches!(state, AgentState::Blocked { .. })
        || (live && seen.reported == Some(ReportedStatus::Blocked))
        || agent.view_name() == "blocked"
    {
        out.push(Anomaly::Blocked);
    }
    if matches!(state, AgentState::Failed { .. } | AgentState::Escalated { .. } | AgentState::TimedOut { .. })
        || (live && seen.reported == Some(ReportedStatus::Failed))
    {
        out.push(Anomaly::Failed);
    }
    if state.needs_human() {
        out.push(Anomaly::NeedsHuman { escalation: state.escalation() });
    }
    if let AgentState::Retrying { next_mono, .. } = state {
        out.push(Anomaly::Retrying { in_ms: next_mono.saturating_sub(mono) });
    }
    if let (AgentState::Queued { .. }, Some(reason)) = (state, seen.queue_reason) {
        out.push(Anomaly::Queued { reason: reason.to_string() });
    }
    out
}
