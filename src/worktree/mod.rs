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
    git_with(dir, args, None)
}

/// As [`git`], the descriptor `keep` (close-on-exec here) left open in git's process alone.
fn git_with(dir: &Path, args: &[&str], keep: Option<i32>) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("git");
    if let Some(fd) = keep {
        // SAFETY: between fork and exec, only fcntl on a descriptor this process owns.
        unsafe {
            cmd.pre_exec(move || {
                libc::fcntl(fd, libc::F_SETFD, 0);
                Ok(())
            });
        }
    }
    let out = cmd
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
    /// When the supervisor asking started: git's leftovers older than this (locks, broken
    /// worktree records) are a killed predecessor's, and are cleared when they block the
    /// preparation.
    pub stale_before: std::time::SystemTime,
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
    // Each leftover cleared lets git get further, to the next one it trips over (a record
    // first, then a lock): tried again while that clears something, a few times at most.
    let mut tries = 0;
    while let Err(e) = add_worktree(p, &base, &path) {
        tries += 1;
        if e.permanent || tries > 3 || !clear_leftovers(&p.repo, &e.message, p.stale_before) {
            return Err(e);
        }
        // What the failed add left half-done is undone before the next.
        discard(&p.repo, &p.path, if p.restore { None } else { Some(&p.branch) });
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
        let ran = run_logged(argv, &p.path, &p.env, &p.log, "worktree_setup", None);
        if !ran.ok {
            return Err(PrepareError {
                permanent: true,
                message: format!("worktree_setup {argv:?} failed: {}", tail(&ran.output, 2000)),
            });
        }
    }
    if p.setup.is_some() || !p.copy.is_empty() {
        record_prepared_state(&p.path).map_err(fail)?;
    }
    Ok(base)
}

/// The file in the worktree's own git directory (`.git/worktrees/<name>/`, gone with the
/// worktree) that holds `git status --porcelain --untracked-files=all` as it was once the
/// worktree was made.
fn prepared_state_file(path: &Path) -> Result<PathBuf, String> {
    let dir = git(path, &["rev-parse", "--absolute-git-dir"])?;
    Ok(PathBuf::from(dir.trim()).join("corral-prepared-status"))
}

/// Records what `worktree_copy` and `worktree_setup` left changed or untracked, so that
/// it does not count as the agent's uncommitted work (see [`is_dirty`]).
fn record_prepared_state(path: &Path) -> Result<(), String> {
    let status = git(path, &["status", "--porcelain", "--untracked-files=all"])?;
    let file = prepared_state_file(path)?;
    std::fs::write(&file, status).map_err(|e| format!("cannot write {}: {e}", file.display()))
}

/// How long [`git_locked`] waits for the lock: longer than any worktree operation takes.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// `git -C repo ARGS` holding the repository's worktree lock (`corral-worktrees.lock` in
/// its git directory, an exclusive `flock`), for what adds, removes or prunes worktrees.
/// Git does not make these safe beside each other: a prune or a failed add cleaning up
/// removes another add's record under `.git/worktrees/` while it is being made, and that
/// add fails ("could not open .../gitdir"). Every corral process (supervisors, `clean`,
/// `merge`) takes the lock, and the git process itself holds it too: a git left running by
/// a supervisor killed mid-way keeps it until it ends, so the next supervisor's git waits
/// for it instead of racing it. Without a lock file to hold (a git directory corral cannot
/// write, something planted at its name), or when it is held for longer than
/// [`LOCK_WAIT`] (by a process that never lets go), git runs as it is.
pub fn git_locked(repo: &Path, args: &[&str]) -> Result<String, String> {
    let dir = repo.join(".git");
    let dir = if dir.is_dir() {
        Some(dir)
    } else {
        git(repo, &["rev-parse", "--path-format=absolute", "--git-common-dir"]).ok().map(|d| PathBuf::from(d.trim()))
    };
    let lock = dir.and_then(|d| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            // A FIFO planted there must not block the open.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(d.join("corral-worktrees.lock"))
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
    });
    let start = std::time::Instant::now();
    let lock = lock.filter(|f| {
        loop {
            match crate::sys::try_lock(f) {
                Ok(true) => break true,
                Ok(false) if start.elapsed() < LOCK_WAIT => std::thread::sleep(std::time::Duration::from_millis(20)),
                _ => break false,
            }
        }
    });
    git_with(repo, args, lock.as_ref().map(std::os::fd::AsRawFd::as_raw_fd))
}

/// `git worktree add`: on a new branch from `base`, or on its existing branch when it is
/// made again.
fn add_worktree(p: &Prepare, base: &str, path: &str) -> Result<(), PrepareError> {
    let fail = |message: String| PrepareError { permanent: false, message };
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
        git_locked(&p.repo, &["worktree", "add", "--quiet", path, &p.branch]).map_err(fail)?;
    } else {
        git_locked(&p.repo, &["worktree", "add", "--quiet", "-b", &p.branch, path, base]).map_err(fail)?;
    }
    Ok(())
}

/// What a git killed mid-way (with the supervisor that ran it) leaves behind and every
/// later `git worktree add` trips over: a lock file git names in `error`, and worktree
/// records under `.git/worktrees/` with an empty `commondir` or no `gitdir` (git dies
/// reading them: "failed to read .../commondir"). Only leftovers older than `before` (the
/// running supervisor's start) are removed: a git running now is never pulled from under.
/// Whether anything was removed (then the preparation is tried again).
pub fn clear_leftovers(repo: &Path, error: &str, before: std::time::SystemTime) -> bool {
    let Ok(common) = git(repo, &["rev-parse", "--path-format=absolute", "--git-common-dir"]) else { return false };
    let common = PathBuf::from(common.trim());
    let old = |p: &Path| std::fs::symlink_metadata(p).and_then(|m| m.modified()).is_ok_and(|t| t < before);
    let mut cleared = false;
    // "Unable to create '<path>.lock': File exists."
    for piece in error.split("Unable to create '").skip(1) {
        let Some(lock) = piece.split_once("': File exists").map(|(l, _)| PathBuf::from(l)) else { continue };
        if lock.extension().is_some_and(|e| e == "lock") && lock.starts_with(&common) && old(&lock) {
            cleared |= std::fs::remove_file(&lock).is_ok();
        }
    }
    for e in std::fs::read_dir(common.join("worktrees")).into_iter().flatten().flatten() {
        let admin = e.path();
        let unreadable = |name: &str| std::fs::read_to_string(admin.join(name)).map_or(true, |t| t.trim().is_empty());
        let broken = (admin.join("commondir").exists() && unreadable("commondir")) || unreadable("gitdir");
        if e.file_type().is_ok_and(|t| t.is_dir()) && broken && old(&admin) {
            cleared |= std::fs::remove_dir_all(&admin).is_ok();
        }
    }
    if cleared {
        let _ = git_locked(repo, &["worktree", "prune"]);
    }
    cleared
}

/// Removes a worktree and, when given, its branch, ignoring what is already gone.
pub fn discard(repo: &Path, path: &Path, branch: Option<&str>) {
    if path.exists() {
        let _ = git_locked(repo, &["worktree", "remove", "--force", "--force", &path.to_string_lossy()]);
        let _ = std::fs::remove_dir_all(path);
    }
    let _ = git_locked(repo, &["worktree", "prune"]);
    if let Some(b) = branch {
        let _ = git(repo, &["branch", "-D", b]);
    }
}

/// The worktree has changes not committed (untracked files count), beyond what its
/// preparation left: an untracked file that was there right after `worktree_copy` and
/// `worktree_setup` (an unignored `node_modules/`, a build directory, a copied `.env`)
/// does not count; any other untracked file does, one the agent put in such a directory
/// included, and so does every change to a tracked file, whoever made it.
pub fn is_dirty(path: &Path) -> bool {
    let Ok(now) = git(path, &["status", "--porcelain", "--untracked-files=all"]) else { return false };
    let before = prepared_state_file(path).ok().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
    let left: std::collections::HashSet<&str> = before.lines().filter(|l| l.starts_with("?? ")).collect();
    now.lines().any(|l| !l.trim().is_empty() && !left.contains(l))
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

/// How a command run by [`run_logged`] went.
#[derive(Debug, Clone)]
pub struct Ran {
    pub ok: bool,
    /// Stopped (its whole process group killed) at its timeout: not ok.
    pub timed_out: bool,
    /// Its output, both streams; when it failed, with a last line saying how it ended.
    pub output: String,
}

/// Runs `argv` in `dir` in its own process group, appending its output to `log` between
/// header lines; stops the group at `timeout`.
pub fn run_logged(
    argv: &[String],
    dir: &Path,
    env: &[(String, String)],
    log: &Path,
    what: &str,
    timeout: Option<Duration>,
) -> Ran {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let mut logf = std::fs::OpenOptions::new().create(true).append(true).open(log).ok();
    if let Some(f) = logf.as_mut() {
        let _ = writeln!(f, "=== corral: {what} {argv:?} in {} ===", dir.display());
    }
    let fail = |output: String| Ran { ok: false, timed_out: false, output };
    let Some((prog, args)) = argv.split_first() else { return fail("empty command".into()) };
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
        Err(e) => return fail(format!("cannot run {prog:?}: {e}")),
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
        (true, _) => format!(
            "timed out after {}: its process group was killed",
            humantime::format_duration(timeout.unwrap_or_default())
        ),
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
    Ran { ok, timed_out, output: text }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn a_git_left_running_keeps_the_worktree_lock_until_it_ends() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path();
        git(repo, &["init", "-q"]).unwrap();
        let end = repo.join("ended");
        // A git that leaves a process of its own running, as one of a supervisor killed
        // mid-way goes on running: git_locked returns at once, the process still holds the lock.
        let slow = format!("alias.slow=!(sleep 0.4; touch '{}') >/dev/null 2>&1 &", end.display());
        git_locked(repo, &["-c", &slow, "slow"]).unwrap();
        assert!(!end.exists(), "returned before what it left running ended");
        // The next locked git runs only once that process is gone.
        let check = format!("alias.check=!test -f '{}'", end.display());
        git_locked(repo, &["-c", &check, "check"]).expect("waited for the process left running");
        // A plain git does not wait (and the lock is free again).
        git(repo, &["-c", &check, "check"]).unwrap();
        assert!(repo.join(".git/corral-worktrees.lock").exists());
        // Planted as a FIFO: git runs, unlocked, at once.
        let lock = repo.join(".git/corral-worktrees.lock");
        std::fs::remove_file(&lock).unwrap();
        let c = std::ffi::CString::new(lock.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        git_locked(repo, &["status", "--short"]).unwrap();
    }
}
