//! The CLI side of the control socket: connect, starting the supervisor on demand (once,
//! even when fifty commands race to do it), send a request, read the reply. Nothing is
//! sent before the socket's directory is found private and the peer is found to be this
//! same user (SO_PEERCRED): a request can carry the caller's whole environment.

use crate::ipc::{Reply, Request};
use crate::protocol::{DataDir, fsio};
use crate::sys as process;
use anyhow::{Context, bail};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the workspace's supervisor, starting it if none is running.
    pub fn connect(data: &DataDir, workspace_root: &Path) -> anyhow::Result<Self> {
        match Self::try_connect(data) {
            Ok(c) => return Ok(c),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!("{e}"),
            Err(_) => {}
        }
        data.create_all().with_context(|| format!("cannot create data dir {}", data.root().display()))?;
        // One starter at a time; the others wait here and then find it running.
        let (lock, _) = fsio::open_write_replacing(data.root(), &data.daemon_start_lock(), fsio::Mode::Update)?;
        process::lock(&lock)?;
        // A supervisor that was just killed can hold its socket and lock for a few more
        // milliseconds while its last threads exit; give it that long before calling the
        // failure real.
        let mut last = None;
        for _ in 0..100 {
            if let Ok(c) = Self::try_connect(data) {
                return Ok(c);
            }
            match start_daemon(data, workspace_root, false) {
                Ok(()) => last = None,
                Err(e) if e.to_string().contains("already running") => last = Some(e),
                Err(e) => return Err(e),
            }
            if let Ok(c) = Self::try_connect(data) {
                return Ok(c);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(last.unwrap_or_else(|| {
            anyhow::anyhow!("supervisor started but {} refuses connections", data.socket().display())
        }))
    }

    /// Starts the supervisor (with `rebuild`: rebuilding agents the registry lacks) and
    /// waits until it is ready, or says why it did not start.
    pub fn start(data: &DataDir, workspace_root: &Path, rebuild: bool) -> anyhow::Result<()> {
        data.create_all().with_context(|| format!("cannot create data dir {}", data.root().display()))?;
        let (lock, _) = fsio::open_write_replacing(data.root(), &data.daemon_start_lock(), fsio::Mode::Update)?;
        process::lock(&lock)?;
        start_daemon(data, workspace_root, rebuild)
    }

    /// One request, one reply, in a single round trip: the liveness check and the request
    /// go out together. If the check is not answered, the request was never read (the
    /// supervisor answers in order), so it is sent again the slow way, starting a
    /// supervisor if none runs.
    pub fn request(data: &DataDir, workspace_root: &Path, req: &Request) -> anyhow::Result<Reply> {
        let line = Self::request_line(data, workspace_root, req)?;
        serde_json::from_str(&line).context("unreadable reply from the supervisor")
    }

    /// As [`Client::request`], the reply's line as it came (for a `--json` command that
    /// prints the data as the supervisor wrote it, see [`crate::ipc::ok_data`]).
    pub fn request_line(data: &DataDir, workspace_root: &Path, req: &Request) -> anyhow::Result<String> {
        let socket = match open_socket(data) {
            Ok(s) => Some(s),
            Err(Unreachable::Refused(why)) => bail!("{why}"),
            Err(Unreachable::Absent(_)) => None,
        };
        if let Some(s) = socket {
            let mut lines = serde_json::to_vec(&Request::Ping)?;
            lines.push(b'\n');
            serde_json::to_writer(&mut lines, req)?;
            lines.push(b'\n');
            let mut c = Self { reader: BufReader::new(s.try_clone()?), writer: s };
            if c.writer.write_all(&lines).is_ok()
                && let Ok(Some(l)) = c.read_line()
                && serde_json::from_str::<Reply>(&l).is_ok_and(|r| r.ok)
            {
                return match c.read_line()? {
                    Some(l) => Ok(l),
                    None => bail!("the supervisor closed the connection without replying"),
                };
            }
        }
        let mut c = Self::connect(data, workspace_root)?;
        c.send(req)?;
        match c.read_line()? {
            Some(l) => Ok(l),
            None => bail!("the supervisor closed the connection without replying"),
        }
    }

    /// Connects only if a supervisor is running and answering: a socket still held open by
    /// a supervisor that is dying does not count.
    pub fn try_connect(data: &DataDir) -> std::io::Result<Self> {
        let s = open_socket(data).map_err(|e| match e {
            Unreachable::Absent(e) => e,
            Unreachable::Refused(why) => std::io::Error::new(std::io::ErrorKind::PermissionDenied, why),
        })?;
        let mut c = Self { reader: BufReader::new(s.try_clone()?), writer: s };
        match c.call(&Request::Ping) {
            Ok(r) if r.ok => Ok(c),
            _ => Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "supervisor not answering")),
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.writer
    }

    pub fn send(&mut self, req: &Request) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.writer.write_all(&line).context("the supervisor closed the connection")?;
        Ok(())
    }

    /// Next line from the supervisor, `None` when it closed the connection.
    pub fn read_line(&mut self) -> anyhow::Result<Option<String>> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).context("reading from the supervisor")?;
        Ok(if n == 0 { None } else { Some(line) })
    }

    pub fn call(&mut self, req: &Request) -> anyhow::Result<Reply> {
        self.send(req)?;
        match self.read_line()? {
            Some(l) => Ok(serde_json::from_str(&l).context("unreadable reply from the supervisor")?),
            None => bail!("the supervisor closed the connection without replying"),
        }
    }
}

/// Why there is no supervisor to talk to: none is listening (one may be started), or what
/// listens, or where, is not to be trusted (nothing may be sent; the user must act).
enum Unreachable {
    Absent(std::io::Error),
    Refused(String),
}

/// Connects to the supervisor's socket, after checking that its directory is the user's
/// alone and before anything is written, that the process serving it is the user's own.
/// A supervisor started with another `$XDG_RUNTIME_DIR` than ours listens where its
/// `daemon.json` (in the private data dir) says.
fn open_socket(data: &DataDir) -> Result<UnixStream, Unreachable> {
    let path = data.socket_dir_ready(false).map_err(Unreachable::Refused)?;
    let s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => match recorded_socket(data).filter(|p| *p != path) {
            Some(other) => {
                if let Some(dir) = other.parent() {
                    crate::protocol::perms::private_dir(dir, false).map_err(Unreachable::Refused)?;
                }
                UnixStream::connect(&other).map_err(|_| Unreachable::Absent(e))?
            }
            None => return Err(Unreachable::Absent(e)),
        },
    };
    check_peer(&s, &path).map_err(Unreachable::Refused)?;
    Ok(s)
}

/// The socket the running supervisor says it listens on, if it wrote one.
fn recorded_socket(data: &DataDir) -> Option<std::path::PathBuf> {
    let text = crate::protocol::files::read_bounded(data.root(), &data.daemon_info()).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v.get("socket")?.as_str()?.into())
}

/// The connected peer must be this same user: anyone else listening there could read the
/// request (and the environment in it) and answer with forgeries.
fn check_peer(s: &UnixStream, path: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid out-pointers of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    let me = crate::protocol::perms::my_uid();
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("cannot tell who serves {}: {e}; nothing was sent", path.display()));
    }
    if cred.uid != me {
        return Err(format!(
            "refusing {}: it is served by uid {} (pid {}), not by you (uid {me}); nothing was sent. Another user \
             may be listening in your supervisor's place: remove the socket (as its owner, or as root) and run \
             the command again",
            path.display(),
            cred.uid,
            cred.pid
        ));
    }
    Ok(())
}

fn start_daemon(data: &DataDir, workspace_root: &Path, rebuild: bool) -> anyhow::Result<()> {
    let (log, _) = fsio::open_write_replacing(data.root(), &data.daemon_log(), fsio::Mode::Append)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--data-dir")
        .arg(data.root())
        .args(["daemon", "--foreground", "--on-demand"])
        .args(rebuild.then_some("--rebuild"))
        .current_dir(workspace_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CORRAL_") {
            cmd.env_remove(k);
        }
    }
    // SAFETY: setsid and umask are async-signal-safe. setsid detaches the supervisor from
    // our terminal and session so it outlives this command; the user's umask is what it
    // passes on to agents.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            crate::protocol::perms::restore_user_umask();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the supervisor")?;
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
    if line.starts_with("corral daemon ready") {
        // It keeps running on its own; reap nothing, the session leader is reparented.
        std::mem::forget(child);
        return Ok(());
    }
    let _ = child.wait();
    let tail = fsio::read_tail(data.root(), &data.daemon_log(), 64 * 1024).map(|(b, _)| b).unwrap_or_default();
    let tail = String::from_utf8_lossy(&tail);
    let tail: Vec<&str> = tail.lines().rev().take(5).collect();
    bail!(
        "the supervisor did not start; last lines of {}:\n{}",
        data.daemon_log().display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}
