//! What an agent CLI's run cost: each attempt's own share of the tokens, cost and turns
//! its CLI reported, priced where the CLI gives no cost, and the role's budgets.

use super::role::{RolePolicy, TokenPrices};
use crate::adapter::Usage;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
}

impl Tokens {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// One attempt's own share.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    pub tokens: Tokens,
    /// `None`: the CLI gave no cost and the role sets no `token_prices`.
    pub cost_usd: Option<f64>,
    pub turns: u32,
}

/// The attempt's share of what the CLI reported: a resumed session's figures cover the
/// session's earlier runs too (`before`), which are subtracted so each run counts once.
pub fn attempt_share(reported: &Usage, before: Option<&Usage>, prices: Option<TokenPrices>) -> Spent {
    let b = before.filter(|_| reported.session_totals).copied().unwrap_or_default();
    let tokens =
        Tokens { input: reported.input.saturating_sub(b.input), output: reported.output.saturating_sub(b.output) };
    let cost_usd = match (reported.cost_usd, prices) {
        (Some(c), _) => Some((c - b.cost_usd.unwrap_or(0.0)).max(0.0)),
        (None, Some(p)) => Some(p.cost(tokens.input, tokens.output)),
        (None, None) => None,
    };
    let turns = reported.turns.unwrap_or(0).saturating_sub(b.turns.unwrap_or(0));
    Spent { tokens, cost_usd, turns }
}

/// Which of the role's budgets the attempt is over, with the figures, if any.
pub fn over_budget(p: &RolePolicy, s: &Spent) -> Option<String> {
    if let (Some(max), Some(c)) = (p.max_cost_usd, s.cost_usd)
        && c > max
    {
        return Some(format!("cost ${c:.4} is over max_cost_usd ${max:.4}"));
    }
    if let Some(max) = p.max_tokens
        && s.tokens.total() > max
    {
        return Some(format!("{} tokens are over max_tokens {max}", s.tokens.total()));
    }
    if let Some(max) = p.max_turns
        && s.turns > max
    {
        return Some(format!("{} turns are over max_turns {max}", s.turns));
    }
    None
}

/// Tokens, cost and turns of all of an agent's attempts: a cost is known only when every
/// attempt that used tokens has one.
pub struct Totals {
    pub tokens: Option<Tokens>,
    pub cost_usd: Option<f64>,
    pub turns: Option<u32>,
}

pub fn agent_totals(a: &super::agent::Agent) -> Totals {
    let mut t = Totals { tokens: None, cost_usd: None, turns: None };
    let mut cost_known = true;
    for s in a.attempts.iter().filter_map(|x| x.stream.as_ref()) {
        if let Some(k) = s.tokens {
            let sum = t.tokens.get_or_insert_with(Default::default);
            sum.input = sum.input.saturating_add(k.input);
            sum.output = sum.output.saturating_add(k.output);
        }
        match s.cost_usd {
            Some(c) => *t.cost_usd.get_or_insert(0.0) += c,
            None if s.tokens.is_some_and(|k| k.total() > 0) => cost_known = false,
            None => {}
        }
        if let Some(n) = s.turns {
            *t.turns.get_or_insert(0) += n;
        }
    }
    if !cost_known {
        t.cost_usd = None;
    }
    t
}
