//! The workspace (the directory holding `corral.toml`, found upward from the cwd like git
//! finds `.git`) and its configuration. A config error names the file, line, key and what
//! is allowed.

use crate::policy::classify::{FailureType, Rule, RuleAction};
use crate::policy::health::{BreakerScope, HealthPolicy};
use crate::policy::role::{Backoff, Jitter, RolePolicy};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CONFIG_FILE: &str = "corral.toml";
pub const DEFAULT_DATA_DIR: &str = ".corral";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub defaults: RoleConfig,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleConfig>,
    #[serde(default)]
    pub classify: Vec<ClassifyConfig>,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub mcp: McpConfig,
    #[serde(default)]
    pub supervisor: SupervisorConfig,
}

/// The default of `[supervisor] idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// With no agent live, queued, waiting or backing off and no client connected for this
    /// long, the supervisor exits (default 10m; "0s": never).
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,
}

impl SupervisorConfig {
    /// How long an idle supervisor lives; `None`: for ever.
    pub fn idle_timeout(&self) -> Option<Duration> {
        Some(self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT)).filter(|d| !d.is_zero())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Lets `spawn_agent` run a caller-given argv; off: only roles' command templates run.
    #[serde(default)]
    pub allow_raw_commands: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// argv template: `{context}`, `{context_file}`, `{task}`, `{agent_id}`, `{role}`,
    /// `{handoff_file}`, `{status_file}`.
    pub command: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_duration")]
    pub attempt_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub heartbeat_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub stall_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub start_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub deadline: Option<Duration>,
    pub max_retries: Option<u32>,
    pub backoff: Option<BackoffConfig>,
    pub progressive_timeout: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    pub max_attempt_timeout: Option<Duration>,
    pub retry_guidance: Option<String>,
    pub require_handoff: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    pub blocked_timeout: Option<Duration>,
    /// Plain output counts as progress (resets the stall check), not only as a heartbeat.
    pub output_is_progress: Option<bool>,
    /// Cap on one attempt's output in the log (`"100MiB"`; `0`: none).
    #[serde(default, deserialize_with = "de_size")]
    pub max_log_size: Option<u64>,
    /// `claude-code`, `codex` or `none` (default: from the command's program name).
    #[serde(default, deserialize_with = "de_adapter")]
    pub adapter: Option<crate::adapter::Adapter>,
    #[serde(default, deserialize_with = "de_duration")]
    pub result_grace: Option<Duration>,
    pub resume_session: Option<bool>,
    #[serde(default, deserialize_with = "de_cost")]
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    pub max_turns: Option<u32>,
    pub token_prices: Option<TokenPricesConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPricesConfig {
    #[serde(deserialize_with = "de_price")]
    pub input: f64,
    #[serde(deserialize_with = "de_price")]
    pub output: f64,
}

fn de_adapter<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<crate::adapter::Adapter>, D::Error> {
    let s = String::deserialize(d)?;
    crate::adapter::Adapter::parse(&s).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "adapter {s:?} is not known; use one of {}",
            crate::adapter::Adapter::NAMES.join(", ")
        ))
    })
}

fn de_cost<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let c = f64::deserialize(d)?;
    if !c.is_finite() || c <= 0.0 {
        return Err(serde::de::Error::custom(format!("max_cost_usd {c} must be a positive number of dollars")));
    }
    Ok(Some(c))
}

fn de_price<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let c = f64::deserialize(d)?;
    if !c.is_finite() || c < 0.0 {
        return Err(serde::de::Error::custom(format!("token price {c} must be zero or more (USD per million tokens)")));
    }
    Ok(c)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default, deserialize_with = "de_duration")]
    pub initial: Option<Duration>,
    #[serde(default, deserialize_with = "de_coefficient")]
    pub coefficient: Option<f64>,
    #[serde(default, deserialize_with = "de_duration")]
    pub max: Option<Duration>,
    #[serde(default, deserialize_with = "de_jitter")]
    pub jitter: Option<Jitter>,
}

/// One `[[classify]]` rule; validated while parsing so errors carry the line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    #[serde(default)]
    pub exit_codes: Vec<i32>,
    #[serde(default, deserialize_with = "de_signals")]
    pub signals: Vec<i32>,
    #[serde(default, deserialize_with = "de_failure_types")]
    pub failure_type: Vec<FailureType>,
    #[serde(default, deserialize_with = "de_regex")]
    pub finding: Option<regex::Regex>,
    #[serde(default, deserialize_with = "de_regex")]
    pub output: Option<regex::Regex>,
    #[serde(deserialize_with = "de_action")]
    pub action: RuleAction,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub max_concurrent: Option<usize>,
    pub breaker_failures: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    pub breaker_window: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub breaker_cooldown: Option<Duration>,
    #[serde(default, deserialize_with = "de_size")]
    pub min_free_memory: Option<u64>,
    pub max_load: Option<f64>,
    pub max_open_escalations: Option<usize>,
    /// `role` (default): one breaker per role; `global`: one for the whole workspace.
    #[serde(default, deserialize_with = "de_breaker_scope")]
    pub breaker_scope: Option<BreakerScope>,
}

fn de_breaker_scope<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<BreakerScope>, D::Error> {
    match String::deserialize(d)?.as_str() {
        "role" => Ok(Some(BreakerScope::Role)),
        "global" => Ok(Some(BreakerScope::Global)),
        other => Err(serde::de::Error::custom(format!("breaker_scope {other:?}: use \"role\" or \"global\""))),
    }
}

/// Milliseconds, saturating: `as u64` would silently keep only the low bits of a huge one.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Config {
    /// `[roles.X]` over `[defaults]` over the seed's table.
    pub fn role(&self, role: &str) -> (Option<Vec<String>>, RolePolicy) {
        let r = self.roles.get(role).cloned().unwrap_or_default();
        let d = &self.defaults;
        let mut p = RolePolicy::seed(role);
        if let Some(t) = r.attempt_timeout.or(d.attempt_timeout) {
            p.attempt_timeout_ms = ms(t);
        }
        if let Some(n) = r.max_retries.or(d.max_retries) {
            p.max_retries = n;
        }
        let both = |own: Option<Duration>, def: Option<Duration>| own.or(def).map(ms);
        if let Some(t) = both(r.heartbeat_timeout, d.heartbeat_timeout) {
            p.heartbeat_timeout_ms = t;
        }
        if let Some(t) = both(r.stall_timeout, d.stall_timeout) {
            p.stall_timeout_ms = t;
        }
        p.start_timeout_ms = both(r.start_timeout, d.start_timeout);
        p.deadline_ms = both(r.deadline, d.deadline);
        p.max_attempt_timeout_ms = both(r.max_attempt_timeout, d.max_attempt_timeout);
        let (rb, db) = (r.backoff.clone().unwrap_or_default(), d.backoff.clone().unwrap_or_default());
        let def = Backoff::default();
        p.backoff = Backoff {
            initial_ms: rb.initial.or(db.initial).map(ms).unwrap_or(def.initial_ms),
            coefficient: rb.coefficient.or(db.coefficient).unwrap_or(def.coefficient),
            max_ms: rb.max.or(db.max).map(ms),
            jitter: rb.jitter.or(db.jitter).unwrap_or_default(),
        };
        p.progressive_timeout = r.progressive_timeout.or(d.progressive_timeout).unwrap_or(true);
        p.retry_guidance = r.retry_guidance.clone().or_else(|| d.retry_guidance.clone());
        p.require_handoff = r.require_handoff.or(d.require_handoff).unwrap_or(false);
        if let Some(t) = both(r.blocked_timeout, d.blocked_timeout) {
            p.blocked_timeout_ms = t;
        }
        p.output_is_progress = r.output_is_progress.or(d.output_is_progress).unwrap_or(false);
        if let Some(m) = r.max_log_size.or(d.max_log_size) {
            p.max_log_size = m;
        }
        p.adapter = r.adapter.or(d.adapter);
        if let Some(t) = both(r.result_grace, d.result_grace) {
            p.result_grace_ms = t;
        }
        p.resume_session = r.resume_session.or(d.resume_session);
        p.max_cost_usd = r.max_cost_usd.or(d.max_cost_usd);
        p.max_tokens = r.max_tokens.or(d.max_tokens);
        p.max_turns = r.max_turns.or(d.max_turns);
        p.token_prices = r
            .token_prices
            .or(d.token_prices)
            .map(|t| crate::policy::role::TokenPrices { input: t.input, output: t.output });
        (r.command.clone().or_else(|| d.command.clone()), p)
    }

    pub fn rules(&self) -> Vec<Rule> {
        self.classify
            .iter()
            .enumerate()
            .map(|(i, c)| Rule {
                name: c.name.clone().unwrap_or_else(|| format!("classify rule {}", i + 1)),
                exit_codes: c.exit_codes.clone(),
                signals: c.signals.clone(),
                failure_types: c.failure_type.clone(),
                finding: c.finding.clone(),
                output: c.output.clone(),
                action: c.action,
            })
            .collect()
    }

    pub fn health(&self) -> HealthPolicy {
        let h = &self.health;
        let d = HealthPolicy::default();
        HealthPolicy {
            max_concurrent: h.max_concurrent.unwrap_or(d.max_concurrent),
            breaker_failures: h.breaker_failures.unwrap_or(d.breaker_failures),
            breaker_window_ms: h.breaker_window.map(ms).unwrap_or(d.breaker_window_ms),
            breaker_cooldown_ms: h.breaker_cooldown.map(ms).unwrap_or(d.breaker_cooldown_ms),
            min_free_memory: h.min_free_memory,
            max_load: h.max_load,
            max_open_escalations: h.max_open_escalations,
            breaker_scope: h.breaker_scope.unwrap_or_default(),
        }
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map(Some).map_err(serde::de::Error::custom)
}

fn de_coefficient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let c = f64::deserialize(d)?;
    if !(1.0..=100.0).contains(&c) {
        return Err(serde::de::Error::custom(format!("coefficient {c} must be between 1.0 and 100.0")));
    }
    Ok(Some(c))
}

fn de_jitter<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Jitter>, D::Error> {
    match String::deserialize(d)?.as_str() {
        "none" => Ok(Some(Jitter::None)),
        "full" => Ok(Some(Jitter::Full)),
        other => Err(serde::de::Error::custom(format!("jitter {other:?} is not allowed; use \"none\" or \"full\""))),
    }
}

fn de_regex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<regex::Regex>, D::Error> {
    let s = String::deserialize(d)?;
    regex::Regex::new(&s).map(Some).map_err(|e| serde::de::Error::custom(format!("invalid regex {s:?}: {e}")))
}

fn de_action<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RuleAction, D::Error> {
    let s = String::deserialize(d)?;
    RuleAction::parse(&s)
        .ok_or_else(|| serde::de::Error::custom(format!("action {s:?} is not allowed; use one of {}", RuleAction::ALL)))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

fn de_failure_types<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<FailureType>, D::Error> {
    let v = match OneOrMany::<String>::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    v.iter()
        .map(|s| {
            FailureType::parse(s).ok_or_else(|| {
                serde::de::Error::custom(format!("failure_type {s:?} is not allowed; use one of {}", FailureType::ALL))
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SigSpec {
    Num(i32),
    Name(String),
}

fn de_signals<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
    let v = match OneOrMany::<SigSpec>::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    v.into_iter()
        .map(|s| match s {
            SigSpec::Num(n) if (1..=64).contains(&n) => Ok(n),
            SigSpec::Num(n) => Err(serde::de::Error::custom(format!("signal {n} is not between 1 and 64"))),
            SigSpec::Name(name) => signal_number(&name).ok_or_else(|| {
                serde::de::Error::custom(format!("signal {name:?} is unknown; use e.g. \"SIGKILL\" or 9"))
            }),
        })
        .collect()
}

fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim_start_matches("SIG");
    Some(match n {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ABRT" => 6,
        "KILL" => 9,
        "SEGV" => 11,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "USR1" => 10,
        "USR2" => 12,
        _ => return None,
    })
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        N(u64),
        T(String),
    }
    match S::deserialize(d)? {
        S::N(n) => Ok(Some(n)),
        S::T(t) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size; use forms like 512MiB or 2GiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// The longest duration corral accepts, in `corral.toml` and on the command line alike: far
/// past any sensible timeout, so a typo like `99999999999h` is an error naming the key
/// rather than a timeout that silently never comes, and its milliseconds fit with room to spare.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// humantime forms (`90s`, `15m`, `1h30m`), up to [`MAX_DURATION`]; a bare number is
/// refused because its unit would be a guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); use forms like 90s, 15m or 1h30m"))?;
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than the maximum, {}", humantime::format_duration(MAX_DURATION)));
    }
    Ok(d)
}

#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub config_file: Option<PathBuf>,
    pub config: Config,
}

impl Workspace {
    /// Finds the workspace from `start` upward; without a `corral.toml` it is `start`.
    pub fn discover(start: &Path) -> Result<Self, String> {
        let mut dir = Some(start);
        while let Some(d) = dir {
            let f = d.join(CONFIG_FILE);
            if f.is_file() {
                let config = load(&f)?;
                return Ok(Self { root: d.to_path_buf(), config_file: Some(f), config });
            }
            dir = d.parent();
        }
        Ok(Self { root: start.to_path_buf(), config_file: None, config: Config::default() })
    }

    pub fn data_dir(&self) -> PathBuf {
        let d = self.config.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if d.is_absolute() { d } else { self.root.join(d) }
    }
}

pub fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text, path)
}

pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
    let c: Config = toml::from_str(text).map_err(|e| {
        let span = e.span();
        let line = span.as_ref().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let key = span.as_ref().and_then(|s| key_at(text, s.start));
        let msg = e.message().trim_end().to_string();
        let key = key.map(|k| format!(" key `{k}`:")).unwrap_or_default();
        match line {
            Some(l) => format!("{}:{l}:{key} {msg}", path.display()),
            None => format!("{}: {msg}", path.display()),
        }
    })?;
    for (name, _) in c.roles.iter() {
        crate::protocol::ids::validate_role(name).map_err(|e| format!("{}: [roles.{name}]: {e}", path.display()))?;
    }
    Ok(c)
}

/// The dotted key of the line holding byte `pos`: the table header above it plus the key.
fn key_at(text: &str, pos: usize) -> Option<String> {
    let upto = &text[..pos.min(text.len())];
    let line_start = upto.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().map(str::trim).filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = upto[..line_start]
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .map(|l| l.trim().trim_matches(|c| c == '[' || c == ']').to_string());
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k.to_string()),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_table_and_overrides() {
        let c = parse(
            "[defaults]\nmax_retries = 3\nheartbeat_timeout = \"1m\"\n[roles.PLANNER]\nattempt_timeout = \"1m\"\ncommand = [\"echo\", \"{task}\"]\n",
            Path::new("corral.toml"),
        )
        .unwrap();
        let (cmd, p) = c.role("PLANNER");
        assert_eq!(cmd.unwrap()[0], "echo");
        assert_eq!(p.attempt_timeout_ms, 60_000);
        assert_eq!(p.max_retries, 3);
        assert_eq!(p.heartbeat_timeout_ms, 60_000);
        assert_eq!(c.role("OTHER").1.max_retries, 3);
        assert_eq!(c.role("IMPLEMENTER").1.attempt_timeout_ms, 1_800_000);
        assert_eq!(Config::default().role("CLEANER").1.max_retries, 1);
        assert_eq!(Config::default().health().max_concurrent, 5);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            ("data_dir = \"d\"\n\n[defaults]\nbogus = 1\n", "corral.toml:4:", "bogus"),
            ("[defaults]\nattempt_timeout = \"-5m\"\n", "corral.toml:2:", "defaults.attempt_timeout"),
            ("[[classify]]\nfinding = \"(\"\naction = \"retry\"\n", "corral.toml:2:", "invalid regex"),
            ("[[classify]]\naction = \"explode\"\n", "corral.toml:2:", "retry, retry_with_context"),
            ("[roles.X]\nbackoff = { jitter = \"some\" }\n", "corral.toml:2:", "\"none\" or \"full\""),
            ("[health]\nmin_free_memory = \"12 parsecs\"\n", "corral.toml:2:", "unknown unit"),
            ("[[classify]]\nfailure_type = \"oops\"\naction = \"retry\"\n", "corral.toml:2:", "crash, timeout"),
        ];
        for (text, at, what) in cases {
            let e = parse(text, Path::new("corral.toml")).unwrap_err();
            assert!(e.starts_with(at) && e.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn durations_past_the_maximum_are_refused_with_the_key() {
        let cases = [
            ("[defaults]\nattempt_timeout = \"99999999999h\"\n", "defaults.attempt_timeout"),
            ("[roles.X]\nbackoff = { initial = \"600000000000000000s\" }\n", "roles.X.backoff"),
            ("[health]\nbreaker_cooldown = \"876601h\"\n", "health.breaker_cooldown"),
        ];
        for (text, key) in cases {
            let e = parse(text, Path::new("corral.toml")).unwrap_err();
            assert!(
                e.starts_with("corral.toml:2:") && e.contains(key) && e.contains("maximum, 100years"),
                "{text:?}: {e}"
            );
        }
        let c = parse("[health]\nbreaker_window = \"100y\"\n", Path::new("corral.toml")).unwrap();
        assert_eq!(c.health().breaker_window_ms, 100 * 31_557_600_000);
        assert!(parse_duration("1000000000000000000s").unwrap_err().contains("maximum"));
    }

    #[test]
    fn classify_rules_parse_in_order() {
        let c = parse(
            "[[classify]]\nexit_codes = [75]\naction = \"retry\"\n[[classify]]\nsignals = [\"SIGKILL\"]\nfailure_type = [\"crash\"]\noutput = \"OOM\"\naction = \"fail\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let r = c.rules();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].exit_codes, vec![75]);
        assert_eq!(r[1].signals, vec![9]);
        assert_eq!(r[1].action, RuleAction::Fail);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
    }
}
