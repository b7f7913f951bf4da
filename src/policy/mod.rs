//! The pure core: every decision about an agent (start or queue, what an exit means, how
//! to classify a failure, retry or escalate, how long to back off, when a timeout fires,
//! whether the system is healthy enough to start another) is a function of (state, input,
//! now) returning the new state and the actions to carry out. Nothing in here reads a
//! clock, a file or a process.

pub mod admission;
pub mod agent;
pub mod anomaly;
pub mod classify;
pub mod escalation;
pub mod evidence;
pub mod health;
pub mod lifecycle;
pub mod provider;
pub mod role;
pub mod usage;

/// `n` with the word for one or many: `1 attempt`, `2 attempts`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;
