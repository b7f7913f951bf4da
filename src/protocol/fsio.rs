//! The one way corral opens a file an agent can touch: everything under the data dir
//! (status files, handoffs, inbox, context, logs, run files, locks, exports and their
//! temporary companions). Agents run as the same user, next to the data dir, so any of
//! those names may be a symlink, a hard link, a FIFO or a device by the time corral opens it.
//!
//! Every operation takes the trusted root (the data dir) and a path below it. Below the
//! root no symlink is ever followed, at any component (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`, or a walk with `O_NOFOLLOW` where the kernel lacks it); a path not
//! below the root is anchored at its own directory, so at least its final name is never
//! followed. Opens never block (`O_NONBLOCK`, `O_NOCTTY`), and what was opened must be a
//! regular file; a file corral writes in place must also be its own, with a single link.
//! Whole files are replaced by a temporary created `O_EXCL` inside the opened directory and
//! renamed within it, so a planted name is replaced, never written through. A refusal is an
//! error about that file alone.
//!
//! Owns opening and replacing; what the files contain is for the rest of `protocol`.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Files and directories corral creates are its user's alone.
pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Why a file was not opened: it is not a file corral may trust. Carried inside an
/// `io::Error`, so callers that only print errors need nothing special.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Refused {}

fn refused(kind: io::ErrorKind, why: impl Into<String>) -> io::Error {
    io::Error::new(kind, Refused(why.into()))
}

/// Whether `e` says the file is there but is not one corral trusts (as opposed to missing
/// or an I/O failure).
pub fn is_refusal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|r| r.is::<Refused>())
}

/// Turns the kernel's answers to a refused open into words.
fn explain(e: io::Error) -> io::Error {
    let why = match e.raw_os_error() {
        Some(libc::ELOOP) => "a symbolic link is in the way; corral never follows one here",
        Some(libc::EXDEV) => "the path leaves the data dir",
        Some(libc::ENOTDIR) => "a part of the path is not a directory",
        Some(libc::EISDIR) => "it is a directory, not a regular file",
        Some(libc::ENXIO) => "it is a FIFO or device, not a regular file",
        _ => return e,
    };
    refused(e.kind(), why)
}

fn cstr(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// `(anchor, relative path)`: the trusted directory the open starts from and the plain
/// names below it. Only `Normal` components are accepted below the anchor.
fn split<'a>(root: &'a Path, path: &'a Path) -> io::Result<(&'a Path, &'a Path)> {
    let (anchor, rel) = match path.strip_prefix(root) {
        Ok(rel) if !rel.as_os_str().is_empty() => (root, rel),
        _ => {
            let name = path.file_name().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{} does not name a file", path.display()))
            })?;
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            (parent, Path::new(name))
        }
    };
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(refused(io::ErrorKind::InvalidInput, "`.`, `..` or `/` inside a path under the data dir"));
    }
    Ok((anchor, rel))
}

/// The anchor itself is the caller's (the configured data dir, or the directory of a path
/// it named): symlinks in it are followed.
fn open_anchor(anchor: &Path) -> io::Result<OwnedFd> {
    let c = cstr(anchor.as_os_str())?;
    // SAFETY: a valid C string; the result is a new descriptor we own.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens `rel` below `dir` without following any symlink on the way.
fn open_below(dir: &OwnedFd, rel: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match openat2(dir, rel, flags, mode) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            other => return other.map_err(explain),
        }
    }
    walk(dir, rel, flags, mode).map_err(explain)
}

/// `struct open_how` of openat2(2) (libc's is not constructible outside it).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2(dir: &OwnedFd, rel: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(rel.as_os_str())?;
    let creates = flags & (libc::O_CREAT | libc::O_TMPFILE) != 0;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if creates { mode as u64 } else { 0 },
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: valid descriptor, C string and struct, with its size; returns a new fd or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// The same as `openat2` without it: one component at a time, each `O_NOFOLLOW`.
fn walk(dir: &OwnedFd, rel: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let names: Vec<&OsStr> = rel.iter().collect();
    let Some((last, dirs)) = names.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    };
    let mut held: Option<OwnedFd> = None;
    for name in dirs {
        let at = held.as_ref().unwrap_or(dir);
        held = Some(openat(at, name, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?);
    }
    openat(held.as_ref().unwrap_or(dir), last, flags | libc::O_NOFOLLOW, mode)
}

fn openat(dir: &OwnedFd, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: valid descriptor and C string; returns a new fd or -1.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })?;
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn kind_name(m: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// What an opened file must be.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    /// A regular file (it is only read).
    Regular,
    /// A regular file of ours with one link (it is written in place).
    Ours,
}

fn check(file: &File, want: Check) -> io::Result<Metadata> {
    let m = file.metadata()?;
    if !m.is_file() {
        return Err(refused(io::ErrorKind::InvalidData, format!("it is {}, not a regular file", kind_name(&m))));
    }
    if want == Check::Ours {
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if m.uid() != me {
            return Err(refused(
                io::ErrorKind::PermissionDenied,
                format!("it is owned by uid {}, not by corral's user (uid {me})", m.uid()),
            ));
        }
        if m.nlink() != 1 {
            return Err(refused(
                io::ErrorKind::PermissionDenied,
                format!("it has {} hard links; corral never writes through a hard link", m.nlink()),
            ));
        }
    }
    Ok(m)
}

fn open_checked(root: &Path, path: &Path, flags: i32, want: Check) -> io::Result<File> {
    let (anchor, rel) = split(root, path)?;
    let dir = open_anchor(anchor)?;
    let fd = open_below(&dir, rel, flags | libc::O_NONBLOCK | libc::O_NOCTTY, FILE_MODE)?;
    let file = File::from(fd);
    check(&file, want)?;
    Ok(file)
}

/// Opens a file for reading: a regular file, reached without following symlinks.
pub fn open_read(root: &Path, path: &Path) -> io::Result<File> {
    open_checked(root, path, libc::O_RDONLY, Check::Regular)
}

/// Reads a whole file, refusing one larger than `limit` bytes unread past the limit.
pub fn read(root: &Path, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_from(open_read(root, path)?, limit)
}

/// Reads a file the caller named itself (a command-line argument): its symlinks are the
/// caller's choice and are followed, but it still never blocks and is bounded.
pub fn read_named(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    check(&file, Check::Regular)?;
    read_from(file, limit)
}

fn read_from(file: File, limit: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(refused(io::ErrorKind::InvalidData, format!("it is larger than the {} limit", bytes(limit))));
    }
    Ok(buf)
}

/// The last `limit` bytes of a file, and how many bytes before them were left out.
pub fn read_tail(root: &Path, path: &Path, limit: u64) -> io::Result<(Vec<u8>, u64)> {
    let mut file = open_read(root, path)?;
    let len = file.metadata()?.len();
    let skipped = len.saturating_sub(limit);
    file.seek(SeekFrom::Start(skipped))?;
    let mut buf = Vec::new();
    file.take(limit).read_to_end(&mut buf)?;
    Ok((buf, skipped))
}

fn bytes(n: u64) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MiB", n / (1024 * 1024))
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n}-byte")
    }
}

/// How a file written in place is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Appended to (logs, the inbox).
    Append,
    /// Read and written at offsets, never truncated (run files, lock files).
    Update,
}

impl Mode {
    fn flags(self) -> i32 {
        match self {
            Mode::Append => libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT,
            Mode::Update => libc::O_RDWR | libc::O_CREAT,
        }
    }
}

/// Opens (creating it) a file corral writes in place: a regular file of ours, one link.
pub fn open_write(root: &Path, path: &Path, mode: Mode) -> io::Result<File> {
    let file = open_checked(root, path, mode.flags(), Check::Ours)?;
    // The descriptor may become a child's stdout; a regular file ignores O_NONBLOCK, but
    // the child should not see a flag it did not ask for.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

/// As [`open_write`], but what is refused (a symlink, hard link, FIFO, a file of another
/// user, a directory replaced by a symlink) is moved aside and a fresh file made, so the
/// write still happens, somewhere safe. Returns why something was moved aside, if it was.
pub fn open_write_replacing(root: &Path, path: &Path, mode: Mode) -> io::Result<(File, Option<String>)> {
    let first = match open_write(root, path, mode) {
        Ok(f) => return Ok((f, None)),
        Err(e) => e,
    };
    let why = first.to_string();
    let (anchor, rel) = split(root, path)?;
    if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_dir(root, &anchor.join(parent))?;
        if let Ok(f) = open_write(root, path, mode) {
            return Ok((f, Some(why)));
        }
    }
    if !is_refusal(&first) && first.kind() != io::ErrorKind::NotFound {
        return Err(first);
    }
    let dir = Dir::open(root, path.parent().unwrap_or(Path::new(".")))?;
    let name = rel.file_name().unwrap_or_default();
    if mode == Mode::Update && dir.locked(name) {
        // A lock or run file someone holds (an agent added a link to it): setting it aside
        // would let a second holder in beside the first.
        return Err(refused(io::ErrorKind::WouldBlock, format!("{why}, and it is in use (locked); not replaced")));
    }
    dir.set_aside(name)?;
    open_write(root, path, mode).map(|f| (f, Some(why)))
}

/// A directory below the root, held open: operations on names in it cannot be redirected
/// by swapping a component of its path for a symlink.
pub struct Dir {
    fd: OwnedFd,
}

impl Dir {
    /// Opens `dir` (the root itself, or a directory below it) without following symlinks.
    pub fn open(root: &Path, dir: &Path) -> io::Result<Self> {
        let fd = match dir.strip_prefix(root) {
            Ok(rel) if rel.as_os_str().is_empty() => open_anchor(root)?,
            Ok(rel) => {
                if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                    return Err(refused(io::ErrorKind::InvalidInput, "`.` or `..` inside a path under the data dir"));
                }
                open_below(&open_anchor(root)?, rel, libc::O_PATH | libc::O_DIRECTORY, 0)?
            }
            Err(_) => open_anchor(dir)?,
        };
        Ok(Self { fd })
    }

    fn name(name: &OsStr) -> io::Result<CString> {
        if name.is_empty() || name.as_bytes().contains(&b'/') || name == ".." || name == "." {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a plain file name"));
        }
        cstr(name)
    }

    /// Creates a new file; fails if the name exists as anything, a symlink included.
    pub fn create_new(&self, name: &OsStr) -> io::Result<File> {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        Self::name(name)?;
        openat(&self.fd, name, flags, FILE_MODE).map(File::from)
    }

    /// Opens (creating it) a file in this directory to write in place.
    pub fn open_write(&self, name: &OsStr) -> io::Result<File> {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
        Self::name(name)?;
        let file = File::from(openat(&self.fd, name, flags, FILE_MODE).map_err(explain)?);
        check(&file, Check::Ours)?;
        Ok(file)
    }

    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (f, t) = (Self::name(from)?, Self::name(to)?);
        // SAFETY: valid descriptor and C strings.
        cvt(unsafe { libc::renameat(self.fd.as_raw_fd(), f.as_ptr(), self.fd.as_raw_fd(), t.as_ptr()) }).map(drop)
    }

    /// Swaps two names atomically (`RENAME_EXCHANGE`).
    pub fn exchange(&self, a: &OsStr, b: &OsStr) -> io::Result<()> {
        let (a, b) = (Self::name(a)?, Self::name(b)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid descriptor and C strings.
        cvt(unsafe { libc::renameat2(fd, a.as_ptr(), fd, b.as_ptr(), libc::RENAME_EXCHANGE) }).map(drop)
    }

    /// Removes a name (a file, symlink or FIFO; never what a symlink points to).
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        let c = Self::name(name)?;
        // SAFETY: valid descriptor and C string.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
    }

    /// Whether `name` is a regular file some process holds a `flock` on.
    fn locked(&self, name: &OsStr) -> bool {
        let Ok(fd) = openat(&self.fd, name, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY, 0)
        else {
            return false;
        };
        let file = File::from(fd);
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return false;
        }
        // SAFETY: flock on a descriptor we own; released when it closes.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
    }

    /// Moves an entry corral will not use out of the way, to `.NAME.refused` (replacing
    /// an earlier one), or removes it when even that fails. Never follows it.
    pub fn set_aside(&self, name: &OsStr) -> io::Result<()> {
        let mut aside = OsString::from(".");
        aside.push(name);
        aside.push(".refused");
        match self.rename(name, &aside) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(_) => match self.unlink(name) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Lists the names in the directory (not `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        // A readable descriptor of the very directory we hold, through /proc: std reads
        // directories only by path.
        let c = CString::new(".").expect("no NUL");
        // SAFETY: valid descriptor and C string; returns a new fd or -1.
        let fd = cvt(unsafe {
            libc::openat(self.fd.as_raw_fd(), c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
        })?;
        // SAFETY: a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let names = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        Ok(names)
    }
}

/// The process that made the spare named `name` (`.spare.<pid>.<n>.<hex>`), if it is one.
fn spare_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(".spare.")?;
    let mut parts = rest.split('.');
    let pid = parts.next()?.parse::<i32>().ok().filter(|p| *p > 0)?;
    let n = parts.next()?;
    let hex = parts.next()?;
    let ok = parts.next().is_none()
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then_some(pid)
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Replaces the file at `path` with `bytes` for every reader at once: a new file created
/// inside the opened directory, then renamed over the name. Whatever was planted at the
/// name (a symlink, a hard link to someone's file) is replaced, never written through. A
/// parent directory that is missing, or was replaced by a symlink, is made again first.
pub fn write_atomic(root: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (anchor, rel) = split(root, path)?;
    let parent = path.parent().unwrap_or(Path::new("."));
    let dir = match Dir::open(root, parent) {
        Ok(d) => d,
        Err(_) if rel.parent().is_some_and(|p| !p.as_os_str().is_empty()) => {
            ensure_dir(root, &anchor.join(rel.parent().expect("checked")))?;
            Dir::open(root, parent)?
        }
        Err(e) => return Err(e),
    };
    write_in(&dir, rel.file_name().unwrap_or_default(), bytes)
}

/// [`write_atomic`] into a directory already held open.
pub fn write_in(dir: &Dir, name: &OsStr, bytes: &[u8]) -> io::Result<()> {
    // Hidden, per-process temp name: watchers skip dotfiles, and two writers never share one.
    let (file, tmp) = {
        let mut tries = 0;
        loop {
            let mut tmp = OsString::from(".");
            tmp.push(name);
            // The clock's nanoseconds make the name one no agent can plant in advance.
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            tmp.push(format!(".{}.{}.{:x}.tmp", std::process::id(), unique(), nanos.subsec_nanos()));
            match dir.create_new(&tmp) {
                Ok(f) => break (f, tmp),
                // Something planted at the temp name: never touched, another name is taken.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(explain(e)),
            }
        }
    };
    let result = (&file).write_all(bytes).and_then(|()| dir.rename(&tmp, name).map_err(explain));
    if result.is_err() {
        let _ = dir.unlink(&tmp);
    }
    result
}

/// A file made ahead of need: empty, ours, under a hidden name in its directory, held
/// open. Creating a file is the slow part of making one (on ext4 with online discard, a
/// third of a millisecond and more where files were recently freed); renaming one into
/// place is not. A spare not put in place is removed when dropped.
pub struct Spare {
    dir: Dir,
    root: std::path::PathBuf,
    dir_path: std::path::PathBuf,
    name: OsString,
    file: Option<File>,
}

impl Spare {
    /// Removes the spares in `dir` left by processes that are gone or zombies (killed before
    /// they could put them in place or drop them); the number removed. A spare of a live process, or a
    /// name that only looks like one's, is left alone.
    pub fn sweep(root: &Path, dir: &Path) -> usize {
        let Ok(d) = Dir::open(root, dir) else { return 0 };
        let Ok(names) = d.names() else { return 0 };
        let mut removed = 0;
        for n in names {
            let Some(pid) = n.to_str().and_then(spare_pid) else { continue };
            if crate::sys::process_ended(pid) && d.unlink(&n).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Makes a spare in `dir`, which is `root` or below it.
    pub fn make(root: &Path, dir: &Path) -> io::Result<Self> {
        let d = Dir::open(root, dir)?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let name = OsString::from(format!(".spare.{}.{}.{:x}", std::process::id(), unique(), nanos.subsec_nanos()));
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
        let file = File::from(openat(&d.fd, &name, flags, FILE_MODE).map_err(explain)?);
        // As `open_write`: the descriptor may become a child's stdout.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        }
        Ok(Self { dir: d, root: root.to_path_buf(), dir_path: dir.to_path_buf(), name, file: Some(file) })
    }

    /// Whether it can become `path`: a name in its directory, which is still the one at
    /// that path (not one deleted or replaced since).
    pub fn fits(&self, path: &Path) -> bool {
        let same_dir = || {
            let Ok(now) = Dir::open(&self.root, &self.dir_path) else { return false };
            let stat = |d: &Dir| {
                // SAFETY: a zeroed stat is a valid buffer for fstat to fill.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: valid descriptor and buffer.
                (unsafe { libc::fstat(d.fd.as_raw_fd(), &mut st) } == 0).then_some((st.st_dev, st.st_ino))
            };
            stat(&now).is_some_and(|s| stat(&self.dir) == Some(s))
        };
        path.parent() == Some(self.dir_path.as_path()) && same_dir()
    }

    /// Puts it in place as `path` if nothing is there, and gives its file; `None` when
    /// something is (the caller opens as it would have) or it is no longer the file made
    /// (an agent replaced its name: whatever now stands at `path` is left to the caller's
    /// own checks).
    pub fn place_new(mut self, path: &Path) -> Option<File> {
        if !self.fits(path) {
            return None;
        }
        let to = Dir::name(path.file_name()?).ok()?;
        let from = Dir::name(&self.name).ok()?;
        let fd = self.dir.fd.as_raw_fd();
        // SAFETY: valid descriptor and C strings.
        let moved = unsafe { libc::renameat2(fd, from.as_ptr(), fd, to.as_ptr(), libc::RENAME_NOREPLACE) } == 0;
        if !moved {
            return None;
        }
        let file = self.file.take()?;
        self.name.clear();
        let placed = self.dir.same_file(path.file_name()?, &file);
        placed.then_some(file)
    }

    /// Writes `bytes` into it and puts it in place as `path`, over whatever is there (an
    /// atomic replace, as [`write_atomic`]). `Err` when it could not be (nothing is left
    /// half done at `path`: the caller writes it as it would have).
    pub fn write_over(mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let not = |what: &str| io::Error::other(what.to_string());
        let name = path.file_name().filter(|_| self.fits(path)).ok_or_else(|| not("not in the spare's directory"))?;
        let file = self.file.as_ref().ok_or_else(|| not("spent"))?;
        (&*file).write_all(bytes)?;
        if !self.dir.same_file(&self.name, file) {
            return Err(not("the spare was replaced"));
        }
        self.dir.rename(&self.name, name)?;
        self.name.clear();
        Ok(())
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if !self.name.is_empty()
            && let Some(f) = &self.file
            && self.dir.same_file(&self.name, f)
        {
            let _ = self.dir.unlink(&self.name);
        }
    }
}

impl Dir {
    /// Whether `name` in this directory is `file` itself (not a link followed).
    fn same_file(&self, name: &OsStr, file: &File) -> bool {
        let Ok(c) = Self::name(name) else { return false };
        // SAFETY: a zeroed stat is a valid buffer for fstatat to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, C string and buffer.
        let r = unsafe { libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        r == 0 && file.metadata().is_ok_and(|m| m.dev() == st.st_dev && m.ino() == st.st_ino)
    }
}

/// Makes `dir` (below `root`) and the directories on the way, none through a symlink. A
/// component that is not a real directory (a symlink, a file an agent put in its place) is
/// moved aside and a real directory made. The root itself is the caller's and is made as
/// an ordinary path.
pub fn ensure_dir(root: &Path, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(root)?;
    let rel = match dir.strip_prefix(root) {
        Ok(rel) => rel,
        Err(_) => return std::fs::create_dir_all(dir),
    };
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(refused(io::ErrorKind::InvalidInput, "`.` or `..` inside a path under the data dir"));
    }
    let mut at = Dir { fd: open_anchor(root)? };
    for name in rel.iter() {
        let c = Dir::name(name)?;
        let mut tries = 0;
        let fd = loop {
            // SAFETY: valid descriptor and C string.
            let made = unsafe { libc::mkdirat(at.fd.as_raw_fd(), c.as_ptr(), DIR_MODE as libc::mode_t) };
            if made != 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
            match openat(&at.fd, name, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0) {
                Ok(fd) => break fd,
                // The agent may swap it again while we repair: a few rounds, then give up.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) && tries < 8 => {
                    tries += 1;
                    at.set_aside(name)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 8 => tries += 1,
                Err(e) => return Err(explain(e)),
            }
        };
        at = Dir { fd };
    }
    Ok(())
}

/// The entry's own metadata (a symlink is described, not followed).
pub fn lstat(path: &Path) -> Option<Metadata> {
    std::fs::symlink_metadata(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn spares_of_processes_that_are_gone_are_swept_and_others_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        std::fs::create_dir(&dir).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let live = Spare::make(root.path(), &dir).unwrap();
        for n in [
            format!(".spare.{gone}.3.1f"),
            format!(".spare.{gone}.x.1f"),
            format!(".spare.{gone}.3"),
            "a.run".to_string(),
        ] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        assert_eq!(Spare::sweep(root.path(), &dir), 1);
        let left = names(&dir);
        assert!(!left.contains(&format!(".spare.{gone}.3.1f")), "{left:?}");
        assert_eq!(left.len(), 4, "the live spare, the look-alikes and the run file stay: {left:?}");
        drop(live);
        assert_eq!(names(&dir).len(), 3);
    }

    #[test]
    fn a_spare_takes_a_free_name_only_and_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        std::fs::create_dir(&dir).unwrap();
        // Put in place: the file is there under its name, private and empty.
        let s = Spare::make(root.path(), &dir).unwrap();
        let mut f = s.place_new(&dir.join("a.run")).expect("free name");
        f.write_all(b"x").unwrap();
        assert_eq!(std::fs::read(dir.join("a.run")).unwrap(), b"x");
        assert_eq!(names(&dir), ["a.run"]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.join("a.run")).unwrap().permissions().mode() & 0o777, 0o600);
        // A taken name (a file, a planted symlink) is left as it is, and the spare removed.
        symlink("/etc/passwd", dir.join("b.run")).unwrap();
        for taken in ["a.run", "b.run"] {
            let s = Spare::make(root.path(), &dir).unwrap();
            assert!(s.place_new(&dir.join(taken)).is_none());
        }
        assert_eq!(names(&dir), ["a.run", "b.run"]);
        assert_eq!(std::fs::read(dir.join("a.run")).unwrap(), b"x");
        // Another directory's name is not taken; an unused spare goes when dropped.
        let s = Spare::make(root.path(), &dir).unwrap();
        assert!(s.place_new(&root.path().join("c.run")).is_none());
        drop(Spare::make(root.path(), &dir).unwrap());
        assert_eq!(names(&dir), ["a.run", "b.run"]);
    }

    #[test]
    fn a_spare_written_over_replaces_whatever_is_there_unless_it_was_swapped() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("context");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.md"), "old").unwrap();
        Spare::make(root.path(), &dir).unwrap().write_over(&dir.join("a.md"), b"new").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.md")).unwrap(), "new");
        assert_eq!(names(&dir), ["a.md"]);
        // The spare's name swapped for a symlink by an agent: nothing is renamed.
        let s = Spare::make(root.path(), &dir).unwrap();
        let spare = names(&dir).into_iter().find(|n| n.starts_with(".spare")).unwrap();
        std::fs::remove_file(dir.join(&spare)).unwrap();
        symlink("/etc/passwd", dir.join(&spare)).unwrap();
        assert!(s.write_over(&dir.join("a.md"), b"evil").is_err());
        assert_eq!(std::fs::read_to_string(dir.join("a.md")).unwrap(), "new");
        // Its directory replaced since it was made: it does not fit any more.
        let s = Spare::make(root.path(), &dir).unwrap();
        std::fs::rename(&dir, root.path().join("old")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        assert!(s.write_over(&dir.join("a.md"), b"lost").is_err());
        assert!(!dir.join("a.md").exists());
    }

    fn mkfifo(p: &Path) {
        let c = cstr(p.as_os_str()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    struct T {
        _d: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }
    fn setup() -> T {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let outside = d.path().join("secret");
        std::fs::write(&outside, b"SECRET").unwrap();
        T { root, outside, _d: d }
    }

    #[test]
    fn reads_refuse_symlinks_fifos_devices_and_huge_files() {
        for walk_only in [false, true] {
            NO_OPENAT2.store(walk_only, Ordering::Relaxed);
            let t = setup();
            let f = t.root.join("sub/ok.json");
            std::fs::write(&f, b"hello").unwrap();
            assert_eq!(read(&t.root, &f, 100).unwrap(), b"hello");
            assert!(is_refusal(&read(&t.root, &f, 3).unwrap_err()));
            let link = t.root.join("sub/link.json");
            symlink(&t.outside, &link).unwrap();
            let e = read(&t.root, &link, 100).unwrap_err();
            assert!(is_refusal(&e) && e.to_string().contains("symbolic link"), "{e}");
            symlink("/dev/zero", t.root.join("sub/zero")).unwrap();
            assert!(is_refusal(&read(&t.root, &t.root.join("sub/zero"), 100).unwrap_err()));
            mkfifo(&t.root.join("sub/fifo"));
            let e = read(&t.root, &t.root.join("sub/fifo"), 100).unwrap_err();
            assert!(e.to_string().contains("FIFO"), "{e}");
            // A symlinked directory on the way is refused too.
            symlink(t.root.join("sub"), t.root.join("alias")).unwrap();
            assert!(is_refusal(&read(&t.root, &t.root.join("alias/ok.json"), 100).unwrap_err()));
            assert!(read(&t.root, &t.root.join("sub/none"), 100).unwrap_err().kind() == io::ErrorKind::NotFound);
        }
        NO_OPENAT2.store(false, Ordering::Relaxed);
    }

    #[test]
    fn writes_in_place_refuse_hard_links_and_replacing_keeps_the_outside_file() {
        let t = setup();
        let log = t.root.join("sub/a.log");
        std::fs::hard_link(&t.outside, &log).unwrap();
        let e = open_write(&t.root, &log, Mode::Append).unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");
        let (mut f, why) = open_write_replacing(&t.root, &log, Mode::Append).unwrap();
        assert!(why.is_some());
        f.write_all(b"output").unwrap();
        assert_eq!(std::fs::read(&t.outside).unwrap(), b"SECRET");
        assert_eq!(std::fs::read(&log).unwrap(), b"output");

        let inbox = t.root.join("sub/inbox.md");
        symlink(&t.outside, &inbox).unwrap();
        let (mut f, why) = open_write_replacing(&t.root, &inbox, Mode::Append).unwrap();
        assert!(why.unwrap().contains("symbolic link"));
        f.write_all(b"msg").unwrap();
        assert_eq!(std::fs::read(&t.outside).unwrap(), b"SECRET");
        assert!(!fs_is_symlink(&inbox));

        // A FIFO is never opened for writing, and never blocks.
        let fifo = t.root.join("sub/fifo.md");
        mkfifo(&fifo);
        assert!(is_refusal(&open_write(&t.root, &fifo, Mode::Update).unwrap_err()));
        let (_f, why) = open_write_replacing(&t.root, &fifo, Mode::Update).unwrap();
        assert!(why.is_some() && lstat(&fifo).unwrap().is_file());
    }

    fn fs_is_symlink(p: &Path) -> bool {
        lstat(p).is_some_and(|m| m.file_type().is_symlink())
    }

    #[test]
    fn atomic_write_replaces_planted_names_and_never_writes_through() {
        let t = setup();
        let target = t.root.join("sub/x.json");
        symlink(&t.outside, &target).unwrap();
        write_atomic(&t.root, &target, b"new").unwrap();
        assert_eq!(std::fs::read(&t.outside).unwrap(), b"SECRET");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert!(!fs_is_symlink(&target));
        // Hard link at the target: the other name keeps its content.
        let hl = t.root.join("sub/h.json");
        std::fs::hard_link(&t.outside, &hl).unwrap();
        write_atomic(&t.root, &hl, b"mine").unwrap();
        assert_eq!(std::fs::read(&t.outside).unwrap(), b"SECRET");
        // The directory replaced by a symlink: made again, nothing written outside.
        let elsewhere = t._d.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::remove_dir_all(t.root.join("sub")).unwrap();
        symlink(&elsewhere, t.root.join("sub")).unwrap();
        write_atomic(&t.root, &t.root.join("sub/y.json"), b"y").unwrap();
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert!(lstat(&t.root.join("sub")).unwrap().is_dir());
        assert_eq!(std::fs::read(t.root.join("sub/y.json")).unwrap(), b"y");
        // No temp files left behind.
        let names = Dir::open(&t.root, &t.root.join("sub")).unwrap().names().unwrap();
        assert_eq!(names, vec![OsString::from("y.json")]);
    }

    #[test]
    fn ensure_dir_moves_aside_what_is_not_a_directory() {
        let t = setup();
        let d = t.root.join("status");
        std::fs::write(&d, b"file").unwrap();
        ensure_dir(&t.root, &d).unwrap();
        assert!(lstat(&d).unwrap().is_dir());
        std::fs::remove_dir(&d).unwrap();
        symlink(&t.outside, &d).unwrap();
        ensure_dir(&t.root, &d.join("deeper")).unwrap();
        assert!(lstat(&d.join("deeper")).unwrap().is_dir());
        assert_eq!(std::fs::read(&t.outside).unwrap(), b"SECRET");
    }

    #[test]
    fn paths_outside_the_root_are_anchored_at_their_directory() {
        let t = setup();
        let other = t._d.path().join("report.md");
        write_atomic(&t.root, &other, b"r").unwrap();
        assert_eq!(std::fs::read(&other).unwrap(), b"r");
        let link = t._d.path().join("l");
        symlink(&t.outside, &link).unwrap();
        assert!(is_refusal(&read(&t.root, &link, 10).unwrap_err()));
        assert_eq!(read_named(&link, 10).unwrap(), b"SECRET");
        assert!(read(&t.root, &t.root.join("sub/../../secret"), 10).is_err());
    }
}
