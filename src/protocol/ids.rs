//! Agent ids and role names. Both end up in file names under the data dir, so they are
//! validated here, once, and nothing that fails validation can name a path outside it.

use std::fmt;

/// Longest id or role accepted; keeps file names well under every filesystem limit.
pub const MAX_NAME_LEN: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not allowed: {why}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub why: String,
}

fn check(what: &'static str, value: &str, extra: &[char]) -> Result<(), NameError> {
    let err = |why: String| NameError { what, value: value.to_string(), why };
    if value.is_empty() {
        return Err(err("it is empty".into()));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(err(format!("it is longer than {MAX_NAME_LEN} characters")));
    }
    if !value.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(err("it must start with a letter or digit".into()));
    }
    if let Some(bad) =
        value.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || extra.contains(c)))
    {
        let allowed =
            if extra.is_empty() { "letters, digits, '_' and '-'" } else { "letters, digits, '_', '-' and '.'" };
        return Err(err(format!("it contains {bad:?}; only {allowed} are allowed")));
    }
    Ok(())
}

/// Longest role: `agent-<number>-<ROLE>` must still fit in an id.
pub const MAX_ROLE_LEN: usize = 64;

/// A role name such as `PLANNER`: letters, digits, `_` and `-`.
pub fn validate_role(role: &str) -> Result<(), NameError> {
    check("role", role, &[])?;
    if role.len() > MAX_ROLE_LEN {
        return Err(NameError {
            what: "role",
            value: role.to_string(),
            why: format!("it is longer than {MAX_ROLE_LEN} characters"),
        });
    }
    Ok(())
}

/// An admission group's name (`--group`, `[groups.NAME]`): letters, digits, `_` and `-`,
/// as a role's.
pub fn validate_group(group: &str) -> Result<(), NameError> {
    check("group", group, &[])?;
    if group.len() > MAX_ROLE_LEN {
        return Err(NameError {
            what: "group",
            value: group.to_string(),
            why: format!("it is longer than {MAX_ROLE_LEN} characters"),
        });
    }
    Ok(())
}

/// An agent id: letters, digits, `_`, `-` and `.`, starting with a letter or digit, so it
/// can never be `..`, contain a slash, or be hidden.
pub fn validate_id(id: &str) -> Result<(), NameError> {
    check("agent id", id, &['.'])?;
    if id.contains("..") {
        return Err(NameError { what: "agent id", value: id.to_string(), why: "it contains \"..\"".into() });
    }
    Ok(())
}

#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct AgentId(String);

impl AgentId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        validate_id(s)?;
        Ok(Self(s.to_string()))
    }
    /// The seed's form: `agent-<NNN>-<ROLE>`.
    pub fn generated(number: u64, role: &str) -> Self {
        Self(format!("agent-{number:03}-{role}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_paths_and_empties() {
        for bad in ["", "../../etc/x", "a/b", ".hidden", "..", "a b", "-x", "a\0b", "x..y", "x.."] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
        for bad in ["A/B", "x.y", ""] {
            assert!(validate_role(bad).is_err(), "{bad:?} accepted as role");
        }
        assert!(validate_id("agent-001-PLANNER").is_ok());
        assert!(validate_id("build.v2_x").is_ok());
        assert_eq!(AgentId::generated(7, "AUDITOR").as_str(), "agent-007-AUDITOR");
        assert_eq!(AgentId::generated(1234, "X").as_str(), "agent-1234-X");
    }

    #[test]
    fn message_says_what_is_wrong() {
        let e = validate_id("../../etc/x").unwrap_err().to_string();
        assert!(e.contains("agent id") && e.contains("start with"), "{e}");
        let e = validate_role("A/B").unwrap_err().to_string();
        assert!(e.contains("'/'"), "{e}");
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;
    #[test]
    fn every_valid_role_makes_a_valid_generated_id() {
        let role = "R".repeat(MAX_ROLE_LEN);
        assert!(validate_role(&role).is_ok());
        assert!(validate_role(&"R".repeat(MAX_ROLE_LEN + 1)).is_err());
        assert!(validate_id(AgentId::generated(u64::MAX, &role).as_str()).is_ok());
    }
    #[test]
    fn oversized_sizes_are_errors_not_overflows() {
        assert!(crate::config::parse_size("17179869184GiB").unwrap_err().contains("too large"));
    }
}
