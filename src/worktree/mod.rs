//! Git operations for agents' worktrees, through the git CLI (its own locks keep concurrent
//! corral processes and the user's own git commands safe). Everything here blocks on a
//! child process: the supervisor calls it from worker threads, never from its loop.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The top of the git working tree holding `dir` (a `.git` directory or file found upward),
/// found without running git so a spawn can refuse a non-repository at once. Only what git
/// itself takes for one counts: a `.git` directory with a `HEAD`, or a `.git` file naming its
/// `gitdir:`; an empty or stray `.git` (a half-made clone, a leftover) is passed over.
pub fn find_repo(dir: &Path) -> Option<PathBuf> {
    let mut d = Some(dir);
    while let Some(x) = d {
        if is_git_entry(&x.join(".git")) {
            return Some(x.to_path_buf());
        }
        d = x.parent();
    }
    None
}

fn is_git_entry(p: &Path) -> bool {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => p.join("HEAD").is_file(),
        Ok(m) if m.is_file() && m.len() < 64 * 1024 => {
            std::fs::read_to_string(p).is_ok_and(|t| t.trim_start().starts_with("gitdir:"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod find_repo_tests {
    #[test]
    fn a_stray_git_entry_is_not_a_repository() {
        let t = tempfile::tempdir().unwrap();
        let inner = t.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::create_dir(t.path().join("a/.git")).unwrap();
        assert_eq!(super::find_repo(&inner), None, "an empty .git directory");
        std::fs::write(t.path().join("a/.git/HEAD"), "ref: refs/heads/main\n").unwrap();
        assert_eq!(super::find_repo(&inner).as_deref(), Some(t.path().join("a").as_path()));
        std::fs::write(inner.join(".git"), "not a pointer").unwrap();
        assert_eq!(super::find_repo(&inner).as_deref(), Some(t.path().join("a").as_path()), "a stray .git file");
        std::fs::write(inner.join(".git"), "gitdir: /elsewhere/.git/worktrees/b\n").unwrap();
        assert_eq!(super::find_repo(&inner).as_deref(), Some(inner.as_path()), "a worktree's .git file");
    }
}

/// Where worktrees go: `worktree_dir` (relative to the workspace), else `<data dir>/worktrees`.
/// Agents' worktrees and `corral merge`'s own integration worktree alike.
pub fn worktree_root(ws: &crate::config::Workspace, data_root: &Path) -> PathBuf {
    match &ws.config.worktree_dir {
        Some(d) if d.is_absolute() => d.clone(),
        Some(d) => ws.root.join(d),
        None => data_root.join("worktrees"),
    }
}

/// `git -C dir ARGS`: stdout, or an error with git's own message.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "git {} (in {}) failed: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What a worker needs to make an agent's worktree.
#[derive(Debug, Clone)]
pub struct Prepare {
    pub repo: PathBuf,
    pub path: PathBuf,
    pub branch: String,
    pub base: String,
    /// Files (relative to the repository) copied in.
    pub copy: Vec<String>,
    pub setup: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    /// Where the setup's output is appended.
    pub log: PathBuf,
    /// The worktree was made before and its directory is gone (`corral clean --worktrees`):
    /// it is made again on its existing branch, which is never deleted or moved.
    pub restore: bool,
}

/// Why a worktree could not be made: `permanent` failures (the setup command failed) are
/// not retried.
#[derive(Debug, Clone)]
pub struct PrepareError {
    pub permanent: bool,
    pub message: String,
}

/// Makes the worktree from scratch: whatever an earlier, interrupted preparation left at
/// its path or on its branch is removed first, so a half-made worktree is never used.
/// Returns the commit it was made from.
pub fn prepare(p: &Prepare) -> Result<String, PrepareError> {
    let fail = |message: String| PrepareError { permanent: false, message };
    if p.restore {
        // Made again, the worktree is half-made until this is gone (see `making`).
        if let Some(parent) = p.path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(making(&p.path), b"")
            .map_err(|e| fail(format!("cannot write {}: {e}", making(&p.path).display())))?;
    }
    let made = make(p);
    if made.is_err() {
        discard(&p.repo, &p.path, if p.restore { None } else { Some(&p.branch) });
    }
    // Made, or removed: either way not half-made.
    let _ = std::fs::remove_file(making(&p.path));
    made
}

/// The mark of a worktree being made again on its branch, next to it: a supervisor killed
/// meanwhile finds it, and makes the worktree once more before any attempt uses it. (A
/// worktree made the first time needs none: it counts as made once its base is recorded.)
pub fn making(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".making");
    path.with_file_name(name)
}

fn make(p: &Prepare) -> Result<String, PrepareError> {
    let fail = |message: String| PrepareError { permanent: false, message };
    discard(&p.repo, &p.path, if p.restore { None } else { Some(&p.branch) });
    let spec = format!("{}^{{commit}}", p.base);
    let base = git(&p.repo, &["rev-parse", "--verify", "--quiet", &spec])
        .map_err(|_| fail(format!("base {:?} is not a commit of {}", p.base, p.repo.display())))?
        .trim()
        .to_string();
    if let Some(parent) = p.path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
    }
    let path = p.path.to_string_lossy();
    if p.restore {
        if rev(&p.repo, &format!("refs/heads/{}", p.branch)).is_none() {
            return Err(PrepareError {
                permanent: true,
                message: format!(
                    "its worktree {path} was removed and its branch {} is gone from {}, so its work cannot be \
                     continued: spawn a new agent",
                    p.branch,
                    p.repo.display()
                ),
            });
        }
        git(&p.repo, &["worktree", "add", "--quiet", &path, &p.branch]).map_err(fail)?;
    } else {
        git(&p.repo, &["worktree", "add", "--quiet", "-b", &p.branch, &path, &base]).map_err(fail)?;
    }
    for f in &p.copy {
        let rel = Path::new(f);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(fail(format!("worktree_copy {f:?}: give a path inside the repository")));
        }
        let (from, to) = (p.repo.join(rel), p.path.join(rel));
        if !from.exists() {
            continue;
        }
        if let Some(d) = to.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        std::fs::copy(&from, &to).map_err(|e| fail(format!("worktree_copy {f}: {e}")))?;
    }
    if let Some(argv) = &p.setup {
        let (ok, output) = run_logged(argv, &p.path, &p.env, &p.log, "worktree_setup", None);
        if !ok {
            return Err(PrepareError {
                permanent: true,
                message: format!("worktree_setup {argv:?} failed: {}", tail(&output, 2000)),
            });
        }
    }
    Ok(base)
}

/// Removes a worktree and, when given, its branch, ignoring what is already gone.
pub fn discard(repo: &Path, path: &Path, branch: Option<&str>) {
    if path.exists() {
        let _ = git(repo, &["worktree", "remove", "--force", "--force", &path.to_string_lossy()]);
        let _ = std::fs::remove_dir_all(path);
    }
    let _ = git(repo, &["worktree", "prune"]);
    if let Some(b) = branch {
        let _ = git(repo, &["branch", "-D", b]);
    }
}

/// The worktree has changes not committed (untracked files count).
pub fn is_dirty(path: &Path) -> bool {
    git(path, &["status", "--porcelain"]).map(|s| !s.trim().is_empty()).unwrap_or(false)
}

pub fn rev(repo: &Path, what: &str) -> Option<String> {
    git(repo, &["rev-parse", "--verify", "--quiet", &format!("{what}^{{commit}}")]).ok().map(|s| s.trim().to_string())
}

/// Commits on `branch` that `base` does not have.
pub fn commits_ahead(repo: &Path, base: &str, branch: &str) -> usize {
    git(repo, &["rev-list", "--count", &format!("{base}..{branch}")])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Files `branch` changed since it left `base` (the diff against their merge base).
pub fn changed_files(repo: &Path, base: &str, branch: &str) -> Result<Vec<String>, String> {
    let out = git(repo, &["diff", "--name-only", "--no-renames", &format!("{base}...{branch}")])?;
    Ok(out.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// A real three-way merge of two commits, without touching any working tree.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeCheck {
    pub tree: Option<String>,
    /// Conflicted files with the conflicting hunks (the text between markers).
    pub conflicts: Vec<(String, Vec<String>)>,
}

pub fn merge_tree(repo: &Path, ours: &str, theirs: &str) -> Result<MergeCheck, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["merge-tree", "--write-tree", "--name-only", "--no-messages", ours, theirs])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let tree = lines.next().map(str::to_string);
    match out.status.code() {
        Some(0) => Ok(MergeCheck { tree, conflicts: vec![] }),
        Some(1) => {
            let tree_id = tree.clone().unwrap_or_default();
            let conflicts = lines
                .filter(|l| !l.is_empty())
                .map(|f| {
                    let body = git(repo, &["cat-file", "-p", &format!("{tree_id}:{f}")]).unwrap_or_default();
                    (f.to_string(), hunks(&body))
                })
                .collect();
            Ok(MergeCheck { tree, conflicts })
        }
        _ => Err(format!("git merge-tree {ours} {theirs} failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
    }
}

/// The conflict blocks (`<<<<<<<` to `>>>>>>>`) of a merged file.
fn hunks(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<Vec<&str>> = None;
    for l in body.lines() {
        if l.starts_with("<<<<<<<") {
            cur = Some(vec![l]);
        } else if let Some(c) = cur.as_mut() {
            c.push(l);
            if l.starts_with(">>>>>>>") {
                out.push(cur.take().unwrap_or_default().join("\n"));
            }
        }
    }
    out
}

/// The end of `s`, at most `max` bytes, cut at a character boundary.
pub fn tail(s: &str, max: usize) -> String {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].trim().to_string()
}

/// Runs `argv` in `dir` in its own process group, appending its output to `log` between
/// header lines; stops the group at `timeout`. Whether it passed, and its output.
pub fn run_logged(
    argv: &[String],
    dir: &Path,
    env: &[(String, String)],
    log: &Path,
    what: &str,
    timeout: Option<Duration>,
) -> (bool, String) {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let mut logf = std::fs::OpenOptions::new().create(true).append(true).open(log).ok();
    if let Some(f) = logf.as_mut() {
        let _ = writeln!(f, "=== corral: {what} {argv:?} in {} ===", dir.display());
    }
    let Some((prog, args)) = argv.split_first() else { return (false, "empty command".into()) };
    let child = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot run {prog:?}: {e}")),
    };
    // Both streams into one buffer, read on threads so neither pipe fills up.
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(child.stdout.take().map(|x| Box::new(x) as Box<dyn Read + Send>));
    let err = read(child.stderr.take().map(|x| Box::new(x) as Box<dyn Read + Send>));
    let start = Instant::now();
    let pgid = child.id() as i32;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(_) => break None,
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            timed_out = true;
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever the command left running in its group goes with it.
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    let mut text = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    text.push_str(&String::from_utf8_lossy(&err.join().unwrap_or_default()));
    let ok = !timed_out && status.is_some_and(|s| s.success());
    let end = match (timed_out, status) {
        (true, _) => format!("stopped after its {}s timeout", timeout.map_or(0, |t| t.as_secs())),
        (_, Some(s)) => match s.code() {
            Some(c) => format!("exited with code {c}"),
            None => "killed by a signal".into(),
        },
        (_, None) => "lost".into(),
    };
    if let Some(f) = logf.as_mut() {
        let _ = f.write_all(text.as_bytes());
        if !text.ends_with('\n') && !text.is_empty() {
            let _ = writeln!(f);
        }
        let _ = writeln!(f, "corral: {what} {end}: {}", if ok { "passed" } else { "failed" });
    }
    if !ok {
        text.push_str(&format!("\n({what} {end})"));
    }
    (ok, text)
}
