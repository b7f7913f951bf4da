//! The supervisor (`corral daemon`): owns the agents' processes and the registry. It never
//! parses command lines and never decides policy; it feeds the policy core and acts.

pub mod connections;
pub mod daemon;
pub mod export;
pub mod io;
pub mod launch;
pub mod launcher;
pub mod observe;
pub mod orphans;
pub mod prepare;
pub mod process;
pub mod relay;
pub mod requests;
pub mod server;
pub mod shim;
pub mod views;
pub mod watch;

use crate::config::Workspace;
use crate::protocol::{DataDir, atomic, fsio, perms};
use crate::store::sqlite::SqliteRegistry;
use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

/// Runs the supervisor in this process until `corral daemon stop` or SIGTERM.
/// Prints one "ready" line on stdout once the socket accepts connections.
pub fn run(ws: Workspace, data: DataDir) -> anyhow::Result<()> {
    data.create_all().with_context(|| format!("cannot create data dir {}", data.root().display()))?;
    match perms::tighten(data.root()) {
        Ok(0) => {}
        Ok(n) => {
            crate::elog!("corral daemon: {} was open to other users; made {n} entries private", data.root().display())
        }
        Err(e) => crate::elog!("corral daemon: cannot make {} private: {e}", data.root().display()),
    }
    let fd_limit = process::raise_fd_limit();
    // Through fsio: a lock planted as a symlink to someone's file is moved aside, never
    // truncated through.
    let (lock, _) = fsio::open_write_replacing(data.root(), &data.daemon_lock(), fsio::Mode::Update)
        .with_context(|| format!("cannot open {}", data.daemon_lock().display()))?;
    if !process::try_lock(&lock)? {
        let pid = fsio::read(data.root(), &data.daemon_lock(), 64).unwrap_or_default();
        let pid = String::from_utf8_lossy(&pid);
        anyhow::bail!("a supervisor is already running for {} (pid {})", data.root().display(), pid.trim());
    }
    lock.set_len(0)?;
    writeln!(&lock, "{}", std::process::id())?;
    // The agent of a shim that dies is reparented to us, so its exit code is still ours
    // to collect (see `orphans`).
    process::become_subreaper();
    // The registry export is rewritten under a file lease (atomic::replace_in_place), and a
    // broken lease is announced with SIGIO, whose default is to terminate.
    process::ignore_signal(libc::SIGIO);

    let store = SqliteRegistry::open(&data.db_file())
        .with_context(|| format!("cannot open the registry {}", data.db_file().display()))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let socket = data.socket_dir_ready(true).map_err(anyhow::Error::msg)?;
        let _ = std::fs::remove_file(&socket); // stale: we hold the lock, so nobody serves it
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o177) };
        let listener = tokio::net::UnixListener::bind(&socket);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = listener.with_context(|| format!("cannot listen on {}", socket.display()))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;

        let io = Box::new(io::RealIo::new(tx.clone()));
        let mut sup = daemon::Supervisor::new(ws, data.clone(), Box::new(store), io, tx.clone(), socket.clone());
        let watched = [data.status_dir(), data.handoff_dir()];
        let _watcher = watch::watch(data.root(), &watched, sup.written.clone(), tx.clone())
            .context("cannot watch the status and handoff directories")?;
        sup.load()?;
        tokio::spawn(server::serve(listener, tx.clone(), sup.events.clone(), fd_limit, sup.clients.clone()));
        let stop_tx = tx.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            if let Some(t) = term.as_mut() {
                t.recv().await;
                let (r, _) = tokio::sync::oneshot::channel();
                let _ = stop_tx.send(daemon::Msg::Request(crate::ipc::Request::Stop, r));
            }
        });
        let info = serde_json::json!({ "pid": std::process::id(), "socket": socket, "startedAt": sup.started_at });
        let _ = atomic::write_json_atomic(data.root(), &data.daemon_info(), &info);
        let _ = crate::say!("corral daemon ready: pid {} socket {}", std::process::id(), socket.display());
        let _ = std::io::stdout().flush();
        // Whoever started us stops reading after that line; nothing more goes to stdout.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            use std::os::fd::AsRawFd;
            // SAFETY: both descriptors are valid; dup2 atomically replaces fd 1.
            unsafe { libc::dup2(null.as_raw_fd(), 1) };
        }
        crate::elog!("corral daemon: started, pid {}, {} agents in the registry", std::process::id(), sup.order.len());
        let result = sup.run(rx).await;
        // Let connection tasks write the last replies (the one to `daemon stop` among them).
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(data.daemon_info());
        crate::elog!("corral daemon: stopped; running agents keep running");
        result
    })
}

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
