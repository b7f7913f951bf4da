//! The human queue's rules: when an escalation is opened (and when it is not opened again),
//! what a human's answer may say, and what becomes of the agent when its escalation is
//! resolved. Pure: the shell numbers, stores and exports escalations.

use super::agent::{Agent, AgentState, Escalation};
use super::lifecycle::{self, Action, Now};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The conflict an escalation was opened for: which result, and every agent in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConflictRef {
    /// The finding's key, or the workspace-relative file path.
    pub key: String,
    /// `finding` or `file`.
    pub kind: String,
    /// Every agent that took a position, in the order aggregation found them.
    pub agents: Vec<String>,
}

/// What the human decided when resolving an escalation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    /// The value that settles a conflict (`--choose`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choose: Option<Value>,
    /// The agent whose position settles a conflict (`--winner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<String>,
    /// Run the agent again (`--retry`), with a fresh retry budget.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

/// Whether an escalation like this one is already there, so it is not opened again: for a
/// conflict, any escalation of the same conflict, open or resolved (a human's answer is
/// not asked for twice); for an agent, an open one with the same reason.
pub fn already_open<'a>(
    escalations: &'a [Escalation],
    agent: &str,
    reason: &str,
    conflict: Option<&ConflictRef>,
) -> Option<&'a Escalation> {
    match conflict {
        Some(c) => {
            escalations.iter().rev().find(|e| e.conflict.as_ref().is_some_and(|x| x.key == c.key && x.kind == c.kind))
        }
        None => escalations
            .iter()
            .find(|e| e.is_open() && e.conflict.is_none() && e.agent_id.as_str() == agent && e.reason == reason),
    }
}

/// Checks a human's answer against the escalation it resolves; the error says what to do.
pub fn check_answer(e: &Escalation, a: &Answer) -> Result<(), String> {
    if !e.is_open() {
        return Err(format!("escalation {} was already resolved at {}", e.n, e.resolved_at.as_deref().unwrap_or("?")));
    }
    if a.choose.is_some() && a.winner.is_some() {
        return Err("give --choose or --winner, not both".into());
    }
    match &e.conflict {
        Some(c) => {
            if a.retry {
                return Err(format!(
                    "escalation {} is about a conflict between {}; --retry applies to an agent's escalation",
                    e.n,
                    c.agents.join(", ")
                ));
            }
            if let Some(w) = &a.winner
                && !c.agents.contains(w)
            {
                return Err(format!("--winner {w}: not in the conflict; choose one of {}", c.agents.join(", ")));
            }
        }
        None if a.choose.is_some() || a.winner.is_some() => {
            return Err(format!(
                "escalation {} is about {} itself, not a conflict; --choose and --winner settle conflicts",
                e.n, e.agent_id
            ));
        }
        None => {}
    }
    Ok(())
}

/// An agent's escalation was resolved: with `retry` the agent runs again (fresh budget);
/// otherwise an agent that waited on this escalation stays failed, with the human's note.
/// Returns what happened, in words, and the actions to carry out.
pub fn resolved(agent: &mut Agent, e: &Escalation, retry: bool, now: &Now) -> (String, Vec<Action>) {
    let id = agent.spec.id.to_string();
    let waits_on_it =
        agent.state.escalation() == Some(e.n) || (agent.state.needs_human() && agent.state.escalation().is_none());
    if retry {
        return match lifecycle::retry_requested(agent, None, now) {
            Ok(actions) => (format!("{id} runs again with a fresh retry budget"), actions),
            Err(why) => (format!("{id} was not retried: {why}"), vec![]),
        };
    }
    if !waits_on_it {
        return (format!("{id} stays {}", agent.view_name()), vec![]);
    }
    let note = e.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default();
    let reason = format!("escalation {} resolved by a human{note}; not retried", e.n);
    agent.state = AgentState::Failed { reason: reason.clone() };
    agent.updated_at = now.wall.clone();
    let out = vec![Action::Emit { kind: "failed", data: json!({ "reason": reason, "escalation": e.n }) }];
    (format!("{id} stays failed (`corral retry {id}` runs it again)"), out)
}
