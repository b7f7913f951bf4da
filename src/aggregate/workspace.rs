//! Where a listed deliverable points, decided from the path text alone. The filesystem is
//! never consulted here: a path that escapes the workspace must be caught before anything
//! (even an existence check) touches it.

use std::path::{Component, Path, PathBuf};

/// Folds `.` and `..` without resolving symlinks. `..` above the root stays at the root (as
/// the kernel does); `..` at the start of a relative path is kept, so the result can still
/// be seen to escape.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    let path: PathBuf = out.iter().collect();
    if path.as_os_str().is_empty() { PathBuf::from(".") } else { path }
}

/// A listed path once placed against the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// Inside: the absolute (normalized) path to check, and the workspace-relative form used
    /// to name the file in the report and to compare agents' lists.
    Inside { full: PathBuf, relative: String },
    /// Outside: the normalized path, for the report only.
    Outside { full: PathBuf },
}

/// Places `listed` (absolute, or relative to the agent's `cwd`; a relative `cwd` is taken
/// relative to the workspace).
pub fn place(workspace: &Path, cwd: &Path, listed: &str) -> Placed {
    let ws = normalize(workspace);
    let base = if cwd.is_absolute() { cwd.to_path_buf() } else { ws.join(cwd) };
    let full = normalize(&base.join(listed));
    match full.strip_prefix(&ws) {
        Ok(rel) => {
            let relative =
                if rel.as_os_str().is_empty() { ".".to_string() } else { rel.to_string_lossy().into_owned() };
            Placed::Inside { full, relative }
        }
        Err(_) => Placed::Outside { full },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_folds_dots_lexically() {
        assert_eq!(normalize(Path::new("/w/./a/../b")), PathBuf::from("/w/b"));
        assert_eq!(normalize(Path::new("/../../etc")), PathBuf::from("/etc"));
        assert_eq!(normalize(Path::new("a/../../x")), PathBuf::from("../x"));
        assert_eq!(normalize(Path::new("../../x")), PathBuf::from("../../x"));
        assert_eq!(normalize(Path::new("a/..")), PathBuf::from("."));
    }

    #[test]
    fn place_decides_inside_or_outside() {
        let ws = Path::new("/w");
        let cwd = Path::new("/w/sub");
        assert_eq!(
            place(ws, cwd, "x/../y.rs"),
            Placed::Inside { full: "/w/sub/y.rs".into(), relative: "sub/y.rs".into() }
        );
        assert_eq!(place(ws, cwd, "../../etc/passwd"), Placed::Outside { full: "/etc/passwd".into() });
        assert_eq!(place(ws, cwd, "/etc/passwd"), Placed::Outside { full: "/etc/passwd".into() });
        // A sibling whose name merely starts with the workspace's name is still outside.
        assert_eq!(place(ws, cwd, "/wx/a"), Placed::Outside { full: "/wx/a".into() });
        assert_eq!(
            place(ws, Path::new("sub"), "a"),
            Placed::Inside { full: "/w/sub/a".into(), relative: "sub/a".into() }
        );
        assert_eq!(place(Path::new("/w/"), cwd, ".."), Placed::Inside { full: "/w".into(), relative: ".".into() });
    }
}
