//! Atomic file writes: a temp file in the same directory, renamed over the name (no
//! fsync). A reader sees the old file or the new one, never a torn one. Every write goes
//! through [`fsio`], so a name an agent planted (a symlink, a hard link) is replaced, never
//! written through.

use super::fsio::{self, Dir};
use std::ffi::OsString;
use std::io;
use std::path::Path;

/// Writes a file the caller named (a report, `corral.toml`), anchored at its own directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fsio::write_atomic(dir, path, bytes)
}

/// Writes a file below the data dir `root`, following no symlink below it.
pub fn write_beneath(root: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    fsio::write_atomic(root, path, bytes)
}

/// Replaces `path`'s content for readers as atomically as [`write_atomic`], without
/// creating a file and freeing another on every write (on ext4 with online discard that is
/// a third of a millisecond, and it slows every later file creation in the directory). The
/// new content goes into a companion file, `.NAME.swap`, which is then exchanged with
/// `path` (`renameat2(RENAME_EXCHANGE)`): the old version becomes the companion, rewritten
/// the next time. The companion is rewritten only under a write lease (`F_SETLEASE`),
/// which the kernel grants only while no one else has the file open: a reader still going
/// through an old version keeps it intact, and then, as where leases or exchanges are not
/// supported, this falls back to [`write_atomic`]. A companion that is not a regular file
/// of ours with one link (planted, or a hard link exchanged in from the name) is moved
/// aside, never written.
///
/// The caller must ignore `SIGIO`: a lease is broken by someone opening the companion while
/// it is being written, and the kernel says so with that signal.
pub fn replace_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let dir_path = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display())))?;
    let dir = Dir::open(dir_path, dir_path)?;
    let mut swap = OsString::from(".");
    swap.push(name);
    swap.push(".swap");
    let exchanged = (|| -> io::Result<bool> {
        let f = match dir.open_write(&swap) {
            Ok(f) => f,
            Err(e) => {
                if fsio::is_refusal(&e) {
                    dir.set_aside(&swap)?;
                }
                return Ok(false);
            }
        };
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) } != 0 {
            return Ok(false); // someone has it open, or leases are not supported here
        }
        let written = f.write_all_at(bytes, 0).and_then(|()| f.set_len(bytes.len() as u64));
        // SAFETY: as above.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
        written?;
        drop(f);
        match dir.exchange(&swap, name) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The first version: nothing to exchange with yet.
                dir.rename(&swap, name)?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    })();
    match exchanged {
        Ok(true) => Ok(()),
        _ => fsio::write_in(&dir, name, bytes),
    }
}

/// Writes `value` as pretty JSON below the data dir `root`.
pub fn write_json_atomic<T: serde::Serialize>(root: &Path, path: &Path, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_beneath(root, path, &bytes)
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

    #[test]
    fn planted_companions_are_never_written_through() {
        use std::os::unix::fs::symlink;
        // SAFETY: ignoring a signal; see replace_in_place.
        unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("secret");
        std::fs::write(&secret, b"SECRET").unwrap();
        let root = d.path().join("data");
        std::fs::create_dir(&root).unwrap();
        let p = root.join("reg.json");
        symlink(&secret, root.join(".reg.json.swap")).unwrap();
        super::replace_in_place(&p, b"one").unwrap();
        super::replace_in_place(&p, b"two").unwrap();
        // A hard link to the registry becomes the companion after an exchange.
        std::fs::hard_link(&p, d.path().join("held")).unwrap();
        for v in ["three", "four", "five"] {
            super::replace_in_place(&p, v.as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read(&secret).unwrap(), b"SECRET");
        assert_eq!(std::fs::read(d.path().join("held")).unwrap(), b"two");
        assert_eq!(std::fs::read(&p).unwrap(), b"five");
    }
}
