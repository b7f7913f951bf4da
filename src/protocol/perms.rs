//! Who may read corral's files: the user who owns the workspace, no one else. Every corral
//! process creates its files under a private umask (077), so the data dir, the registry and
//! its write-ahead log, logs, contexts, exports and run files are 0700/0600 whatever the
//! caller's umask; commands started for the user (agents) get the user's own umask back.
//! A data dir left too open by an older corral is tightened when the supervisor starts, and
//! a socket directory outside the data dir is used only if it is the user's alone.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// The umask this process was started with (what the user chose), before
/// [`private_umask`] replaced it.
static USER_UMASK: AtomicU32 = AtomicU32::new(0o022);

/// Mode bits that give anyone but the owner access.
const GROUP_OTHER: u32 = 0o077;

/// Makes every file this process creates private to its owner, remembering the user's own
/// umask for the commands corral starts on the user's behalf. Called first thing in main.
pub fn private_umask() {
    // SAFETY: umask only changes this process's file creation mask; it cannot fail.
    let old = unsafe { libc::umask(0o077) };
    USER_UMASK.store(old as u32, Ordering::Relaxed);
}

/// The umask the user gave this process.
pub fn user_umask() -> u32 {
    USER_UMASK.load(Ordering::Relaxed)
}

/// Gives this process the user's umask back, right before it executes a command of the
/// user's (an agent) or another corral process (which makes its own files private again).
/// Async-signal-safe: may be called between fork and exec.
pub fn restore_user_umask() {
    // SAFETY: as in private_umask.
    unsafe { libc::umask(user_umask() as libc::mode_t) };
}

/// A file corral wrote for the user outside its data dir (corral.toml, an aggregate or
/// memory export) gets the mode the user's umask asks for, as if the user had written it.
pub fn user_file(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666 & !user_umask()))
}

/// The uid of this process.
pub fn my_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// Makes the data dir private (0700) and, when it was open to others (a data dir made by an
/// older corral or under a lax umask), every file and directory in it too: an open data dir
/// may have let others read what it held, and its files were made with the same mode.
/// Symbolic links are left alone (their targets are not ours to change). Returns how many
/// entries were tightened.
pub fn tighten(root: &Path) -> io::Result<usize> {
    let meta = std::fs::metadata(root)?;
    if meta.mode() & GROUP_OTHER == 0 {
        return Ok(0);
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(meta.mode() & 0o700 | 0o700))?;
    Ok(1 + tighten_below(root, 3))
}

fn tighten_below(dir: &Path, depth: u32) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in rd.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        let ft = meta.file_type();
        if ft.is_symlink() || meta.uid() != my_uid() {
            continue;
        }
        let mode = meta.mode() & 0o7777;
        if mode & GROUP_OTHER != 0 {
            let private = if ft.is_dir() { mode & 0o700 | 0o700 } else { mode & 0o700 };
            if std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(private)).is_ok() {
                n += 1;
            }
        }
        if ft.is_dir() && depth > 0 {
            n += tighten_below(&e.path(), depth - 1);
        }
    }
    n
}

/// Checks that `dir` is a directory only this user controls: a real directory (not a
/// symbolic link), owned by us, writable by no one else. Anyone who could write in it could
/// put their own socket where corral looks for its supervisor. With `create`, a missing
/// directory is made (0700) first. The error says which path, why, and what to do.
pub fn private_dir(dir: &Path, create: bool) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                // Someone made it meanwhile: judged below like any existing one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create the socket directory {}: {e}", dir.display())),
            }
            std::fs::symlink_metadata(dir).map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?
        }
        // Nothing there: nothing can be listening in it either.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot inspect the socket directory {}: {e}", dir.display())),
        Ok(m) => m,
    };
    let fix = "remove it (as its owner, or as root), or set a shorter `data_dir` in corral.toml so the \
               socket lives in the data dir, or point XDG_RUNTIME_DIR at a directory of your own";
    if meta.file_type().is_symlink() {
        return Err(format!(
            "refusing the socket directory {}: it is a symbolic link, not a directory of yours; {fix}",
            dir.display()
        ));
    }
    if !meta.is_dir() {
        return Err(format!("refusing the socket directory {}: it is not a directory; {fix}", dir.display()));
    }
    if meta.uid() != my_uid() {
        return Err(format!(
            "refusing the socket directory {}: it belongs to uid {}, not to you (uid {}), so another user could \
             listen in your supervisor's place; {fix}",
            dir.display(),
            meta.uid(),
            my_uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "refusing the socket directory {}: it is writable by others (mode {:o}), so another user could put \
             their socket there; run `chmod 700 {}`",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dir_refuses_what_others_could_write() {
        let d = tempfile::tempdir().unwrap();
        let fresh = d.path().join("fresh");
        private_dir(&fresh, true).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&open, true).unwrap_err();
        assert!(e.contains("writable by others") && e.contains("open"), "{e}");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(private_dir(&link, true).unwrap_err().contains("symbolic link"));
        assert!(private_dir(&d.path().join("missing"), false).is_ok());
    }

    #[test]
    fn tighten_closes_an_open_data_dir() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        std::fs::create_dir_all(root.join("logs")).unwrap();
        std::fs::write(root.join("logs/a.log"), "x").unwrap();
        std::fs::write(root.join("corral.db-wal"), "x").unwrap();
        for p in [root.join("logs/a.log"), root.join("corral.db-wal")] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        for p in [&root, &root.join("logs")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(tighten(&root).unwrap(), 4);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("logs")), 0o700);
        assert_eq!(mode(&root.join("logs/a.log")), 0o600);
        assert_eq!(mode(&root.join("corral.db-wal")), 0o600);
        assert_eq!(tighten(&root).unwrap(), 0);
    }
}
