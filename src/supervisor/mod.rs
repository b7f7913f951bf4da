//! The supervisor (`corral daemon`): owns the agents' processes and the registry. It never
//! parses command lines and never decides policy; it feeds the policy core and acts.

pub mod connections;
pub mod daemon;
pub mod export;
pub mod identity;
pub mod io;
pub mod launch;
pub mod launcher;
pub mod notify;
pub mod observe;
pub mod orphans;
pub mod prepare;
/// The system-call wrappers, by their old name inside the supervisor.
pub use crate::sys as process;
pub mod relay;
pub mod requests;
pub mod server;
pub mod shim;
pub mod stream;
pub mod views;
pub mod watch;
pub mod watchdog;

use crate::config::Workspace;
use crate::protocol::{DataDir, atomic, fsio, perms};
use crate::store::sqlite::SqliteRegistry;
use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

/// Runs the supervisor in this process until `corral daemon stop` or SIGTERM.
/// Prints one "ready" line on stdout once the socket accepts connections.
/// With `rebuild`, agents the registry lacks are rebuilt from the data dir's evidence (and
/// a registry file that cannot be opened is set aside first) instead of refusing to start.
pub fn run(ws: Workspace, data: DataDir, rebuild: bool) -> anyhow::Result<()> {
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
    // What this supervisor serves, by identity: the lock it holds must be the one in the dir
    // the name shows now (not one in a dir swapped away while it was being taken).
    let ident = identity::Identity::take(&data)?;
    if identity::fd_id(&lock) != identity::file_id(&data.daemon_lock(), false) {
        anyhow::bail!("{} was replaced while the supervisor started; run the command again", data.root().display());
    }
    // The agent of a shim that dies is reparented to us, so its exit code is still ours
    // to collect (see `orphans`).
    process::become_subreaper();
    // The registry export is rewritten under a file lease (atomic::replace_in_place), and a
    // broken lease is announced with SIGIO, whose default is to terminate.
    process::ignore_signal(libc::SIGIO);

    let store = match SqliteRegistry::open(&data.db_file()) {
        Ok(s) => s,
        Err(e) if rebuild => {
            let aside = set_aside_registry(&data)?;
            crate::elog!("corral daemon: the registry could not be opened ({e}); set aside as {}", aside.display());
            SqliteRegistry::open(&data.db_file())
                .with_context(|| format!("cannot open the registry {}", data.db_file().display()))?
        }
        Err(e) => anyhow::bail!(
            "cannot open the registry {db}: {e}. Nothing was changed. To set it aside and rebuild the agents from \
             the run files and spawn-registry.json, run `corral daemon start --rebuild`; to start afresh, move {root} \
             away.",
            db = data.db_file().display(),
            root = data.root().display()
        ),
    };
    let ident = ident.with_registry();
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
        // Removed at the end only if it is still this one (another supervisor may serve the
        // same path by then, for a data dir made again under the same name).
        let socket_id = identity::file_id(&socket, false);

        let io = Box::new(io::RealIo::new(tx.clone()));
        let mut sup = daemon::Supervisor::new(ws, data.clone(), Box::new(store), io, tx.clone(), socket.clone());
        sup.identity = Some(ident.clone());
        sup.rebuild = rebuild;
        // The run dir for adapter agents' observations: usage is shown as it is written.
        let watched = [data.status_dir(), data.handoff_dir(), data.run_dir()];
        let _watcher = watch::watch(data.root(), ident.root_id(), &watched, sup.written.clone(), tx.clone())
            .context("cannot watch the status, handoff and run directories")?;
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
        if socket_id.is_some() && identity::file_id(&socket, false) == socket_id {
            let _ = std::fs::remove_file(&socket);
        }
        // Ours only if it names this process (a supervisor of a data dir made again under
        // this name writes its own).
        let info = crate::protocol::files::read_bounded(data.root(), &data.daemon_info()).unwrap_or_default();
        let mine = serde_json::from_str::<serde_json::Value>(&info)
            .is_ok_and(|v| v["pid"].as_u64() == Some(u64::from(std::process::id())));
        if mine && ident.lost().is_none() {
            let _ = std::fs::remove_file(data.daemon_info());
        }
        crate::elog!("corral daemon: stopped; running agents keep running");
        result
    })
}

/// Moves a registry that cannot be opened (and its log) aside, keeping it for a look.
fn set_aside_registry(data: &DataDir) -> anyhow::Result<std::path::PathBuf> {
    let stamp = crate::protocol::time::compact(crate::protocol::time::now());
    let db = data.db_file();
    let aside = db.with_file_name(format!("corral.db.unreadable-{stamp}"));
    std::fs::rename(&db, &aside).with_context(|| format!("cannot move {} aside", db.display()))?;
    for ext in ["-wal", "-shm"] {
        let from = db.with_file_name(format!("corral.db{ext}"));
        let _ = std::fs::rename(&from, aside.with_file_name(format!("corral.db.unreadable-{stamp}{ext}")));
    }
    Ok(aside)
}

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
