//! Agent ids as people type them: the whole id, any unique prefix of it, or the number in
//! a generated id (`42` for `agent-042-PLANNER`). Every command that takes an id (the CLI's
//! and the MCP tools') reaches this one resolver through the supervisor's lookup.

use super::Failure;

/// How many candidates an ambiguous prefix lists before saying how many more there are.
const LISTED: usize = 10;

/// The number of a generated id `agent-<number>-<ROLE>`.
fn number(id: &str) -> Option<u64> {
    let rest = id.strip_prefix("agent-")?;
    let digits = rest.split('-').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Which of `known` the text `given` names: itself when it is one of them, else the one
/// whose number it is (all digits), else the only one it is a prefix of. None matching
/// is `Ok(None)`; more than one is a usage error (exit 2) listing them.
pub fn resolve<'a, I>(given: &str, known: I) -> Result<Option<&'a str>, Failure>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut by_number = Vec::new();
    let mut by_prefix = Vec::new();
    let wanted_number =
        (!given.is_empty() && given.bytes().all(|b| b.is_ascii_digit())).then(|| given.parse::<u64>().ok()).flatten();
    for id in known {
        if id == given {
            return Ok(Some(id));
        }
        if wanted_number.is_some() && number(id) == wanted_number {
            by_number.push(id);
        }
        if !given.is_empty() && id.starts_with(given) {
            by_prefix.push(id);
        }
    }
    let found = if by_number.is_empty() { by_prefix } else { by_number };
    match found.len() {
        0 => Ok(None),
        1 => Ok(Some(found[0])),
        n => {
            let mut found = found;
            found.sort_unstable();
            let mut list: Vec<String> = found.iter().take(LISTED).map(|s| s.to_string()).collect();
            if n > LISTED {
                list.push(format!("and {} more", n - LISTED));
            }
            Err(Failure::new(
                2,
                format!("{given:?} is ambiguous: it names {n} agents ({}); give more of the id", list.join(", ")),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: &[&str] = &["agent-001-PLANNER", "agent-002-IMPLEMENTER", "agent-042-AUDITOR", "build.v2", "build.v3"];

    fn r(given: &str) -> Result<Option<&'static str>, Failure> {
        resolve(given, IDS.iter().copied())
    }

    #[test]
    fn whole_ids_numbers_and_unique_prefixes() {
        assert_eq!(r("build.v2").unwrap(), Some("build.v2"));
        assert_eq!(r("42").unwrap(), Some("agent-042-AUDITOR"));
        assert_eq!(r("042").unwrap(), Some("agent-042-AUDITOR"));
        assert_eq!(r("1").unwrap(), Some("agent-001-PLANNER"));
        assert_eq!(r("agent-002").unwrap(), Some("agent-002-IMPLEMENTER"));
        assert_eq!(r("nope").unwrap(), None);
        assert_eq!(r("7").unwrap(), None);
        assert_eq!(r("").unwrap(), None);
    }

    #[test]
    fn an_ambiguous_prefix_lists_the_candidates() {
        let e = r("build").unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.msg.contains("ambiguous") && e.msg.contains("build.v2") && e.msg.contains("build.v3"), "{}", e.msg);
        let e = r("agent-0").unwrap_err();
        assert!(e.msg.contains("3 agents"), "{}", e.msg);
    }

    #[test]
    fn a_long_list_is_cut() {
        let many: Vec<String> = (0..25).map(|i| format!("w-{i:02}")).collect();
        let e = resolve("w-", many.iter().map(String::as_str)).unwrap_err();
        assert!(e.msg.contains("25 agents") && e.msg.contains("and 15 more"), "{}", e.msg);
    }
}
