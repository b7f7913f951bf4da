//! The CLI side of the control socket: connect, starting the supervisor on demand (once,
//! even when fifty commands race to do it), send a request, read the reply.

use crate::ipc::{Reply, Request};
use crate::protocol::DataDir;
use crate::supervisor::process;
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
        if let Ok(c) = Self::try_connect(data) {
            return Ok(c);
        }
        data.create_all().with_context(|| format!("cannot create data dir {}", data.root().display()))?;
        // One starter at a time; the others wait here and then find it running.
        let lock =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(data.daemon_start_lock())?;
        process::lock(&lock)?;
        // A supervisor that was just killed can hold its socket and lock for a few more
        // milliseconds while its last threads exit; give it that long before calling the
        // failure real.
        let mut last = None;
        for _ in 0..100 {
            if let Ok(c) = Self::try_connect(data) {
                return Ok(c);
            }
            match start_daemon(data, workspace_root) {
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

    /// One request, one reply, in a single round trip: the liveness check and the request
    /// go out together. If the check is not answered, the request was never read (the
    /// supervisor answers in order), so it is sent again the slow way, starting a
    /// supervisor if none runs.
    pub fn request(data: &DataDir, workspace_root: &Path, req: &Request) -> anyhow::Result<Reply> {
        if let Ok(s) = UnixStream::connect(data.socket()) {
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
                    Some(l) => Ok(serde_json::from_str(&l).context("unreadable reply from the supervisor")?),
                    None => bail!("the supervisor closed the connection without replying"),
                };
            }
        }
        Self::connect(data, workspace_root)?.call(req)
    }

    /// Connects only if a supervisor is running and answering: a socket still held open by
    /// a supervisor that is dying does not count.
    pub fn try_connect(data: &DataDir) -> std::io::Result<Self> {
        let s = UnixStream::connect(data.socket())?;
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

fn start_daemon(data: &DataDir, workspace_root: &Path) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(data.daemon_log())?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--data-dir")
        .arg(data.root())
        .args(["daemon", "--foreground"])
        .current_dir(workspace_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CORRAL_") {
            cmd.env_remove(k);
        }
    }
    // SAFETY: setsid is async-signal-safe; it detaches the supervisor from our terminal
    // and session so it outlives this command.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
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
    let tail = std::fs::read_to_string(data.daemon_log()).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(5).collect();
    bail!(
        "the supervisor did not start; last lines of {}:\n{}",
        data.daemon_log().display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}
