//! Atomic file writes: temp file in the same directory, fsync-free rename. A reader sees the
//! old file or the new one, never a torn one.

use std::io::Write;
use std::path::Path;

pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // Hidden, per-process temp name: watchers skip dotfiles, and two writers never share one.
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), unique()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Replaces `path`'s content for readers as atomically as [`write_atomic`], without
/// creating a file and freeing another on every write (on ext4 with online discard that is
/// a third of a millisecond, and it slows every later file creation in the directory). The
/// new content goes into a companion file, `.NAME.swap`, which is then exchanged with
/// `path` (`renameat2(RENAME_EXCHANGE)`): the old version becomes the companion, rewritten
/// the next time. The companion is rewritten only under a write lease (`F_SETLEASE`),
/// which the kernel grants only while no one else has the file open: a reader still going
/// through an old version keeps it intact, and then, as where leases or exchanges are not
/// supported, this falls back to [`write_atomic`].
///
/// The caller must ignore `SIGIO`: a lease is broken by someone opening the companion while
/// it is being written, and the kernel says so with that signal.
pub fn replace_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let swap = dir.join(format!(".{name}.swap"));
    let exchanged = (|| -> std::io::Result<bool> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&swap)?;
        if !f.metadata()?.is_file() {
            return Ok(false);
        }
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) } != 0 {
            return Ok(false); // someone has it open, or leases are not supported here
        }
        let written = f.write_all_at(bytes, 0).and_then(|()| f.set_len(bytes.len() as u64));
        // SAFETY: as above.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
        written?;
        drop(f);
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (from, to) = (c(&swap)?, c(path)?);
        // SAFETY: two valid C strings; renameat2 only reads them.
        let r = unsafe {
            libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_EXCHANGE)
        };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) && !path.exists() {
            // The first version: nothing to exchange with yet.
            std::fs::rename(&swap, path)?;
            return Ok(true);
        }
        Ok(false)
    })();
    match exchanged {
        Ok(true) => Ok(()),
        _ => write_atomic(path, bytes),
    }
}

pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        super::write_atomic(&p, b"first").unwrap();
        super::write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn replace_in_place_never_rewrites_a_version_someone_is_reading() {
        // SAFETY: ignoring a signal; see replace_in_place.
        unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("reg.json");
        super::replace_in_place(&p, b"one").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        super::replace_in_place(&p, b"two, longer").unwrap();
        super::replace_in_place(&p, b"3").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"3");
        // A reader holds the current version open across two more writes: it must keep
        // reading exactly what it opened.
        let held = std::fs::File::open(&p).unwrap();
        super::replace_in_place(&p, b"four").unwrap();
        super::replace_in_place(&p, b"five!").unwrap();
        super::replace_in_place(&p, b"six").unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut &held, &mut s).unwrap();
        assert_eq!(s, "3");
        assert_eq!(std::fs::read(&p).unwrap(), b"six");
        drop(held);
        for i in 0..5 {
            super::replace_in_place(&p, format!("v{i}").as_bytes()).unwrap();
            assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("v{i}"));
        }
        // Only the file and its companion remain.
        let mut names: Vec<String> =
            std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, [".reg.json.swap", "reg.json"]);
    }
}
