//! The workspace (the directory holding `corral.toml`, found upward from the cwd like git
//! finds `.git`) and its configuration. A config error names the file, line and key.

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
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// argv template: `{context}`, `{context_file}`, `{task}`, `{agent_id}`, `{role}`,
    /// `{handoff_file}`, `{status_file}`.
    pub command: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_duration")]
    pub attempt_timeout: Option<Duration>,
    pub max_retries: Option<u32>,
}

/// The seed's role table (SPEC section 4): attempt timeout and retries.
pub fn seed_role(role: &str) -> (Duration, u32) {
    let m = |x: u64| Duration::from_secs(60 * x);
    match role {
        "PLANNER" => (m(15), 1),
        "IMPLEMENTER" => (m(30), 2),
        "AUDITOR" => (m(20), 1),
        "CLEANER" => (m(10), 1),
        _ => (m(20), 1),
    }
}

/// What a role resolves to after `[roles.X]`, then `[defaults]`, then the seed's table.
#[derive(Debug, Clone, PartialEq)]
pub struct RolePolicy {
    pub command: Option<Vec<String>>,
    pub attempt_timeout: Duration,
    pub max_retries: u32,
}

impl Config {
    pub fn role(&self, role: &str) -> RolePolicy {
        let r = self.roles.get(role);
        let d = &self.defaults;
        let (seed_timeout, seed_retries) = seed_role(role);
        RolePolicy {
            command: r
                .and_then(|r| r.command.clone())
                .or_else(|| d.command.clone()),
            attempt_timeout: r
                .and_then(|r| r.attempt_timeout)
                .or(d.attempt_timeout)
                .unwrap_or(seed_timeout),
            max_retries: r
                .and_then(|r| r.max_retries)
                .or(d.max_retries)
                .unwrap_or(seed_retries),
        }
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// humantime forms (`90s`, `15m`, `1h30m`); a bare number is refused because its unit
/// would be a guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); use forms like 90s, 15m or 1h30m"))
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
                return Ok(Self {
                    root: d.to_path_buf(),
                    config_file: Some(f),
                    config,
                });
            }
            dir = d.parent();
        }
        Ok(Self {
            root: start.to_path_buf(),
            config_file: None,
            config: Config::default(),
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        let d = self
            .config
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if d.is_absolute() {
            d
        } else {
            self.root.join(d)
        }
    }
}

pub fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text, path)
}

pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().trim_end().to_string();
        match line {
            Some(l) => format!("{}:{l}: {msg}", path.display()),
            None => format!("{}: {msg}", path.display()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_table_and_overrides() {
        let c = parse(
            "[defaults]\nmax_retries = 3\n[roles.PLANNER]\nattempt_timeout = \"1m\"\ncommand = [\"echo\", \"{task}\"]\n",
            Path::new("corral.toml"),
        )
        .unwrap();
        let p = c.role("PLANNER");
        assert_eq!(p.attempt_timeout, Duration::from_secs(60));
        assert_eq!(p.max_retries, 3);
        assert_eq!(
            c.role("IMPLEMENTER").attempt_timeout,
            Duration::from_secs(1800)
        );
        assert_eq!(Config::default().role("CLEANER").max_retries, 1);
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse(
            "data_dir = \"d\"\n\n[defaults]\nbogus = 1\n",
            Path::new("corral.toml"),
        )
        .unwrap_err();
        assert!(
            e.starts_with("corral.toml:4:") && e.contains("bogus"),
            "{e}"
        );
        let e = parse(
            "[defaults]\nattempt_timeout = \"-5m\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(e.contains("c.toml:2") && e.contains("duration"), "{e}");
    }
}
