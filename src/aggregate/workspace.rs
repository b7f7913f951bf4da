//! The one rule for deliverables, used by the supervisor's completion check and by
//! `corral aggregate`: a listed file counts as inside the workspace only if its real path
//! (symlinks resolved, the workspace root itself canonicalized) is. A path whose text
//! already leaves the workspace (absolute elsewhere, `..` escapes) is flagged before the
//! filesystem is asked anything about it; one inside by its text is then followed link by
//! link (metadata only, never content), and flagged if it leads out.
//!
//! A worktree agent's deliverables are what its branch holds, not what any checkout has
//! on disk: a listed path (relative to the agent's cwd in its worktree, or absolute in
//! the worktree or in the repository's own checkout) names a file of the branch's tree at
//! its tip, asked of git ([`BranchTree`]); a file only written, never committed, or one
//! that is only in the main checkout, is missing. Such files are named `<branch>:<path>`.

use std::ffi::OsString;
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

/// What the filesystem says about a path that is inside the workspace by its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Exists,
    Missing,
    /// Through symlinks, it leads to this real path outside the workspace.
    Escapes(PathBuf),
}

/// A listed deliverable, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `relative`: workspace-relative, as reports name it and conflicts compare it.
    Exists {
        relative: String,
    },
    Missing {
        relative: String,
    },
    /// `full`: the normalized path as listed; `real`: where a symlink inside led, if one did.
    Outside {
        full: PathBuf,
        real: Option<PathBuf>,
    },
}

impl Verdict {
    /// How the supervisor names a deliverable that fails, `None` when it is fine.
    pub fn failure(&self, listed: &str) -> Option<String> {
        match self {
            Verdict::Exists { .. } => None,
            Verdict::Missing { .. } => Some(listed.to_string()),
            Verdict::Outside { full, real: None } => {
                Some(format!("{listed} (outside the workspace: {})", full.display()))
            }
            Verdict::Outside { real: Some(real), .. } => {
                Some(format!("{listed} (a symlink out of the workspace, to {})", real.display()))
            }
        }
    }
}

/// Judges `listed` (absolute, or relative to the agent's `cwd`) against the workspace;
/// `locate` is asked only about normalized paths inside it by their text.
pub fn judge(workspace: &Path, cwd: &Path, listed: &str, locate: &dyn Fn(&Path) -> Found) -> Verdict {
    match place(workspace, cwd, listed) {
        Placed::Outside { full } => Verdict::Outside { full, real: None },
        Placed::Inside { full, relative } => match locate(&full) {
            Found::Exists => Verdict::Exists { relative },
            Found::Missing => Verdict::Missing { relative },
            Found::Escapes(real) => Verdict::Outside { full, real: Some(real) },
        },
    }
}

/// The real filesystem's answers for [`judge`].
pub struct OnDisk {
    real_root: PathBuf,
}

impl OnDisk {
    pub fn new(workspace: &Path) -> Self {
        let real_root = std::fs::canonicalize(workspace).unwrap_or_else(|_| normalize(workspace));
        Self { real_root }
    }

    pub fn locate(&self, full: &Path) -> Found {
        match real_path(full) {
            Ok((real, exists)) if real.starts_with(&self.real_root) => {
                if exists {
                    Found::Exists
                } else {
                    Found::Missing
                }
            }
            Ok((real, _)) => Found::Escapes(real),
            // A loop of links leads nowhere.
            Err(_) => Found::Missing,
        }
    }
}

/// What one path is in a branch's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    File,
    Dir,
    /// A symlink, with its target.
    Link(String),
    Missing,
}

/// A worktree agent's branch, the files of its tip asked of git path by path (each path
/// once; the listed ones in one call with [`BranchTree::preload`]).
pub struct BranchTree {
    repo: PathBuf,
    branch: String,
    /// The agent's worktree: listed paths are placed against it.
    root: PathBuf,
    known: std::cell::RefCell<std::collections::HashMap<String, Entry>>,
}

impl BranchTree {
    pub fn new(repo: &Path, branch: &str, root: &Path) -> Self {
        Self { repo: repo.to_path_buf(), branch: branch.to_string(), root: normalize(root), known: Default::default() }
    }

    /// `listed` as a path in the worktree: one absolute in the repository's own checkout
    /// names the same file of the tree.
    fn in_worktree(&self, listed: &str) -> String {
        let p = normalize(Path::new(listed));
        if p.is_absolute()
            && !p.starts_with(&self.root)
            && let Ok(rel) = p.strip_prefix(normalize(&self.repo))
        {
            return self.root.join(rel).to_string_lossy().into_owned();
        }
        listed.to_string()
    }

    /// Asks git about these paths (relative to the worktree) at once.
    pub fn preload(&self, cwd: &Path, listed: &[String]) {
        let rels: Vec<String> = listed
            .iter()
            .filter_map(|l| match place(&self.root, cwd, &self.in_worktree(l)) {
                Placed::Inside { relative, .. } => Some(relative),
                Placed::Outside { .. } => None,
            })
            .filter(|r| !self.known.borrow().contains_key(r))
            .collect();
        self.ask(&rels);
    }

    fn ask(&self, rels: &[String]) {
        if rels.is_empty() {
            return;
        }
        let mut args = vec!["--literal-pathspecs", "ls-tree", "-z", self.branch.as_str(), "--"];
        args.extend(rels.iter().map(String::as_str));
        let out = crate::worktree::git(&self.repo, &args).unwrap_or_default();
        let mut known = self.known.borrow_mut();
        for r in rels {
            known.insert(r.clone(), Entry::Missing);
        }
        for rec in out.split('\0').filter(|r| !r.is_empty()) {
            let Some((meta, path)) = rec.split_once('\t') else { continue };
            let mut m = meta.split(' ');
            let (mode, kind, id) = (m.next().unwrap_or_default(), m.next().unwrap_or_default(), m.next());
            let entry = match (mode, kind) {
                ("120000", _) => Entry::Link(
                    id.and_then(|id| crate::worktree::git(&self.repo, &["cat-file", "blob", id]).ok())
                        .unwrap_or_default(),
                ),
                (_, "tree") => Entry::Dir,
                _ => Entry::File,
            };
            known.insert(path.to_string(), entry);
        }
        if rels.iter().any(|r| r == ".") {
            known.insert(".".into(), Entry::Dir);
        }
    }

    fn entry(&self, rel: &str) -> Entry {
        if let Some(e) = self.known.borrow().get(rel) {
            return e.clone();
        }
        self.ask(&[rel.to_string()]);
        self.known.borrow().get(rel).cloned().unwrap_or(Entry::Missing)
    }

    /// [`Found`] for a normalized path inside the worktree, from the branch's tree: symlinks
    /// are followed in the tree, and one leading out of it escapes.
    pub fn locate(&self, full: &Path) -> Found {
        let mut rel = match full.strip_prefix(&self.root) {
            Ok(r) if r.as_os_str().is_empty() => ".".to_string(),
            Ok(r) => r.to_string_lossy().into_owned(),
            Err(_) => return Found::Escapes(full.to_path_buf()),
        };
        for _ in 0..40 {
            match self.entry(&rel) {
                Entry::File | Entry::Dir => return Found::Exists,
                Entry::Missing => return Found::Missing,
                Entry::Link(target) => {
                    let parent = Path::new(&rel).parent().unwrap_or(Path::new("")).to_path_buf();
                    let next = normalize(&self.root.join(parent).join(&target));
                    match next.strip_prefix(&self.root) {
                        Ok(r) if !r.as_os_str().is_empty() => rel = r.to_string_lossy().into_owned(),
                        Ok(_) => return Found::Exists,
                        Err(_) => return Found::Escapes(next),
                    }
                }
            }
        }
        Found::Missing
    }

    /// [`judge`] against the branch: the verdict names the file `<branch>:<path>`.
    pub fn judge(&self, cwd: &Path, listed: &str) -> Verdict {
        let named = |r: String| format!("{}:{r}", self.branch);
        match judge(&self.root, cwd, &self.in_worktree(listed), &|p| self.locate(p)) {
            Verdict::Exists { relative } => Verdict::Exists { relative: named(relative) },
            Verdict::Missing { relative } => Verdict::Missing { relative: named(relative) },
            v @ Verdict::Outside { .. } => v,
        }
    }

    /// How the supervisor names a deliverable that fails against the branch.
    pub fn failure(&self, cwd: &Path, listed: &str) -> Option<String> {
        match self.judge(cwd, listed) {
            Verdict::Missing { relative } => {
                Some(format!("{listed} (not in branch {}: {relative} is not committed there)", self.branch))
            }
            v => v.failure(listed),
        }
    }
}

/// Resolves every symlink on `path` (absolute) as the kernel would, by reading the links
/// themselves (never a file's content). Where a component does not exist, the rest is
/// folded on as text: a dangling link that points out is still seen to point out. Returns
/// the real path and whether it exists.
pub fn real_path(path: &Path) -> std::io::Result<(PathBuf, bool)> {
    const MAX_LINKS: u32 = 40;
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, path);
    let mut real = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            real.pop();
            continue;
        }
        let next = real.join(&name);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&next)?;
                if target.is_absolute() {
                    real = PathBuf::from("/");
                }
                push_components(&mut todo, &target);
            }
            Ok(m) if m.is_dir() || todo.is_empty() => real = next,
            // A file used as a directory, or nothing there: the rest cannot exist.
            _ => {
                let mut rest = next;
                while let Some(n) = todo.pop() {
                    rest.push(n);
                }
                return Ok((normalize(&rest), false));
            }
        }
    }
    Ok((real, true))
}

/// Pushes `p`'s components so that the first is popped first.
fn push_components(todo: &mut Vec<OsString>, p: &Path) {
    for c in p.components().rev() {
        match c {
            Component::Normal(n) => todo.push(n.to_os_string()),
            Component::ParentDir => todo.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
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

    #[test]
    fn symlinks_are_judged_by_where_they_lead() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        std::fs::create_dir_all(ws.join("src")).unwrap();
        std::fs::write(ws.join("src/a.rs"), "a").unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        symlink(d.path().join("secret"), ws.join("out")).unwrap();
        symlink("../..", ws.join("src/up")).unwrap();
        symlink("a.rs", ws.join("src/in")).unwrap();
        symlink(d.path().join("nowhere"), ws.join("dangling")).unwrap();
        symlink("loop", ws.join("loop")).unwrap();
        // The workspace reached through a symlink of its own is still the workspace.
        symlink(&ws, d.path().join("alias")).unwrap();
        let alias = d.path().join("alias");
        let disk = OnDisk::new(&alias);
        let j = |l: &str| judge(&alias, &alias, l, &|p| disk.locate(p));
        assert_eq!(j("src/a.rs"), Verdict::Exists { relative: "src/a.rs".into() });
        assert_eq!(j("src/in"), Verdict::Exists { relative: "src/in".into() });
        assert_eq!(j("src/none.rs"), Verdict::Missing { relative: "src/none.rs".into() });
        assert!(matches!(j("out"), Verdict::Outside { real: Some(r), .. } if r.ends_with("secret")));
        assert!(matches!(j("src/up/secret"), Verdict::Outside { real: Some(_), .. }));
        assert!(matches!(j("dangling"), Verdict::Outside { real: Some(_), .. }));
        assert_eq!(j("loop"), Verdict::Missing { relative: "loop".into() });
        assert!(matches!(j("/etc/passwd"), Verdict::Outside { real: None, .. }));
        assert!(j("out").failure("out").unwrap().contains("symlink"));
    }
}
