//! Failure classification: ordered rules, first match wins (like Kubernetes'
//! podFailurePolicy). The user's `[[classify]]` rules come first, then the seed's defaults.

use regex::Regex;
use serde::{Deserialize, Serialize};

/// The seed's five failure types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureType {
    Crash,
    Timeout,
    Blocked,
    Deliverable,
    Silent,
    /// An agent CLI ran into a rate or usage limit: it waits for the reset, spending no retry.
    RateLimited,
    /// An agent CLI went over its role's cost, token or turn budget.
    Budget,
}

impl FailureType {
    pub const ALL: &'static str = "crash, timeout, blocked, deliverable, silent, rate_limited, budget";
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "crash" => Self::Crash,
            "timeout" => Self::Timeout,
            "blocked" => Self::Blocked,
            "deliverable" => Self::Deliverable,
            "silent" => Self::Silent,
            "rate_limited" => Self::RateLimited,
            "budget" => Self::Budget,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Timeout => "timeout",
            Self::Blocked => "blocked",
            Self::Deliverable => "deliverable",
            Self::Silent => "silent",
            Self::RateLimited => "rate_limited",
            Self::Budget => "budget",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Retry,
    RetryWithContext,
    Wait,
    Escalate,
    Fail,
    /// Start again without counting the attempt against the retry budget.
    Ignore,
}

impl RuleAction {
    pub const ALL: &'static str = "retry, retry_with_context, wait, escalate, fail, ignore";
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "retry" => Self::Retry,
            "retry_with_context" => Self::RetryWithContext,
            "wait" => Self::Wait,
            "escalate" => Self::Escalate,
            "fail" => Self::Fail,
            "ignore" => Self::Ignore,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::RetryWithContext => "retry_with_context",
            Self::Wait => "wait",
            Self::Escalate => "escalate",
            Self::Fail => "fail",
            Self::Ignore => "ignore",
        }
    }
}

/// One rule: every condition it sets must hold (an unset one matches anything).
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub exit_codes: Vec<i32>,
    pub signals: Vec<i32>,
    pub failure_types: Vec<FailureType>,
    pub finding: Option<Regex>,
    pub output: Option<Regex>,
    /// The API error status an agent CLI's result reported.
    pub api_error_status: Vec<u16>,
    /// Regex on the text of an agent CLI's result.
    pub result: Option<Regex>,
    pub action: RuleAction,
}

/// What is known about a failure when it is classified.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub failure: FailureType,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub last_finding: Option<&'a str>,
    pub output_tail: &'a str,
    pub api_error_status: Option<u16>,
    pub result_text: Option<&'a str>,
}

impl Rule {
    pub fn matches(&self, f: &Facts) -> bool {
        (self.exit_codes.is_empty() || f.exit_code.is_some_and(|c| self.exit_codes.contains(&c)))
            && (self.signals.is_empty() || f.signal.is_some_and(|s| self.signals.contains(&s)))
            && (self.failure_types.is_empty() || self.failure_types.contains(&f.failure))
            && self.finding.as_ref().is_none_or(|r| f.last_finding.is_some_and(|t| r.is_match(t)))
            && self.output.as_ref().is_none_or(|r| r.is_match(f.output_tail))
            && (self.api_error_status.is_empty()
                || f.api_error_status.is_some_and(|s| self.api_error_status.contains(&s)))
            && self.result.as_ref().is_none_or(|r| f.result_text.is_some_and(|t| r.is_match(t)))
    }
}

/// What real agent CLIs and their APIs print for failures that go away by themselves: rate
/// limits, timeouts, network trouble, and overloaded or failing servers (HTTP 429 and 5xx,
/// Anthropic's "529 Overloaded", "a server-side issue", "high demand", "temporarily").
const TRANSIENT: &str = concat!(
    r"(?i)rate.?limit|timeout|timed out|network|connection (reset|refused)|temporar(il)?y|",
    r"overloaded|server.side (issue|error)|high demand|internal server error|bad gateway|",
    r"service unavailable|gateway time-?out|try again later|",
    r"\b(429|500|502|503|504|529)\b|\bhttp\S*\s*(status\s*)?(code\s*)?5\d\d\b|\bstatus\W{0,3}5\d\d\b"
);
const NEEDS_CONTEXT: &str = r"(?i)missing context|unclear requirement";
const EXTERNAL: &str = r"(?i)external|dependency|waiting (for|on)";

fn rule(name: &str, types: &[FailureType], finding: Option<&str>, output: Option<&str>, action: RuleAction) -> Rule {
    Rule {
        name: name.to_string(),
        exit_codes: vec![],
        signals: vec![],
        failure_types: types.to_vec(),
        finding: finding.map(|r| Regex::new(r).expect("built-in pattern")),
        output: output.map(|r| Regex::new(r).expect("built-in pattern")),
        api_error_status: vec![],
        result: None,
        action,
    }
}

/// The seed's responses, applied after the user's rules.
pub fn default_rules() -> Vec<Rule> {
    use FailureType::*;
    use RuleAction::*;
    vec![
        rule("default: timeouts retry with a longer timeout", &[Timeout], None, None, Retry),
        rule("default: silent failures are killed and respawned", &[Silent], None, None, Retry),
        rule("default: one corrective attempt for a deliverable failure", &[Deliverable], None, None, RetryWithContext),
        rule(
            "default: blocked on missing context retries with context",
            &[Blocked],
            Some(NEEDS_CONTEXT),
            None,
            RetryWithContext,
        ),
        rule("default: blocked on an external dependency waits", &[Blocked], Some(EXTERNAL), None, Wait),
        rule("default: other blockers need a human", &[Blocked], None, None, Escalate),
        rule(
            "default: transient (rate limit, timeout, network, overload, server error) retries",
            &[Crash],
            Some(TRANSIENT),
            None,
            Retry,
        ),
        rule(
            "default: transient output (rate limit, timeout, network, overload, server error) retries",
            &[Crash],
            None,
            Some(TRANSIENT),
            Retry,
        ),
        Rule {
            api_error_status: vec![408, 429, 500, 502, 503, 504, 529],
            ..rule("default: an agent CLI's transient API error status retries", &[Crash], None, None, Retry)
        },
        Rule {
            result: Some(Regex::new(TRANSIENT).expect("built-in pattern")),
            ..rule("default: an agent CLI's transient error result retries", &[Crash], None, None, Retry)
        },
        rule("default: missing context retries with context", &[Crash], Some(NEEDS_CONTEXT), None, RetryWithContext),
        rule("default: a budget overrun needs a human", &[Budget], None, None, Escalate),
        rule("default: permanent failures escalate", &[], None, None, Escalate),
    ]
}

/// First matching rule: its action and its name (recorded with the decision).
pub fn classify<'r>(user: &'r [Rule], defaults: &'r [Rule], f: &Facts) -> (RuleAction, &'r str) {
    user.iter()
        .chain(defaults)
        .find(|r| r.matches(f))
        .map(|r| (r.action, r.name.as_str()))
        .unwrap_or((RuleAction::Escalate, "no rule matched"))
}
