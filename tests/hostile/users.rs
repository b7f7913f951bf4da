//! Hostile scenarios: another local user. It must not read anything in the data dir (the
//! registry and its write-ahead log hold every spawner's environment), must not be able to
//! stand in for the supervisor by planting the socket's directory or a socket of its own,
//! and gets no answer from the supervisor if it connects.

use crate::common::*;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A throw-away local user, removed again when dropped.
pub struct OtherUser {
    pub name: String,
    pub uid: u32,
}

impl OtherUser {
    /// `None` (with a message saying why the scenario is skipped) unless we are root.
    pub fn create(scenario: &str) -> Option<Self> {
        if unsafe { libc::geteuid() } != 0 {
            println!("HOSTILE {scenario} skipped: needs root to create a second local user");
            return None;
        }
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("crl{}x{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::Relaxed));
        // Parallel tests lock /etc/passwd in turn: try again while it is busy.
        let ok = wait_until(SECS(20), || {
            Command::new("useradd")
                .args(["-M", "-N", "-s", "/usr/sbin/nologin", &name])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(ok, "useradd {name} failed");
        let out = Command::new("id").args(["-u", &name]).output().unwrap();
        let uid = String::from_utf8_lossy(&out.stdout).trim().parse().expect("uid of the new user");
        Some(Self { name, uid })
    }

    /// `prog args...` run as this user.
    pub fn cmd(&self, prog: &str, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", &self.name, "--", prog]).args(args).current_dir("/");
        c
    }

    /// Of `paths`, those this user can open for reading (directories: list).
    pub fn readable(&self, paths: &[PathBuf]) -> Vec<String> {
        let script = "import os,sys\n\
            for p in sys.stdin.read().split('\\0'):\n\
            \x20   if not p: continue\n\
            \x20   try:\n\
            \x20       if os.path.isdir(p): os.listdir(p)\n\
            \x20       else: open(p,'rb').read(1)\n\
            \x20       print(p)\n\
            \x20   except OSError: pass\n";
        let mut child =
            self.cmd(PYTHON, &["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("runuser");
        let mut list = Vec::new();
        for p in paths {
            list.extend_from_slice(p.as_os_str().as_encoded_bytes());
            list.push(0);
        }
        child.stdin.take().unwrap().write_all(&list).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "reader as {} failed: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

impl Drop for OtherUser {
    fn drop(&mut self) {
        // Its processes first (listeners), then the account.
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.name]).status();
        let _ = wait_until(SECS(20), || {
            Command::new("userdel").args(["-f", &self.name]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        });
    }
}

/// A system Python every user can run (the fake listener and the readers are scripts).
const PYTHON: &str = "/usr/bin/python3";

/// A listener of another user's: counts connections and bytes received, and answers every
/// read with a forged spawn reply.
const LISTENER: &str = "import os,socket,sys\n\
s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1],0o777); s.listen(64)\n\
conns=0; total=0\n\
open(sys.argv[2]+'.tmp','w').write('0 0\\n'); os.rename(sys.argv[2]+'.tmp',sys.argv[2])\n\
while True:\n\
\x20   c,_=s.accept(); conns+=1; c.settimeout(2)\n\
\x20   try:\n\
\x20       while True:\n\
\x20           b=c.recv(65536)\n\
\x20           if not b: break\n\
\x20           total+=len(b)\n\
\x20           c.sendall(b'{\"ok\":true,\"data\":{\"agentId\":\"agent-999-FORGED\",\"status\":\"running\"}}\\n')\n\
\x20   except Exception: pass\n\
\x20   c.close()\n\
\x20   open(sys.argv[2]+'.tmp','w').write('%d %d\\n'%(conns,total)); os.rename(sys.argv[2]+'.tmp',sys.argv[2])\n";

struct Listener {
    child: Child,
    counts: PathBuf,
}

impl Listener {
    /// Starts the listener as `user` on `socket`, writing its counts to `counts`.
    fn start(user: &OtherUser, socket: &Path, counts: &Path) -> Self {
        let child = user
            .cmd(PYTHON, &["-c", LISTENER, socket.to_str().unwrap(), counts.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("listener");
        assert!(wait_until(SECS(10), || counts.exists()), "the fake listener never started on {}", socket.display());
        Self { child, counts: counts.to_path_buf() }
    }

    /// (connections, bytes) received so far.
    fn received(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(&self.counts).unwrap_or_default();
        let v: Vec<u64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        (v.first().copied().unwrap_or(0), v.get(1).copied().unwrap_or(0))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), None).unwrap();
}

/// Every entry under `dir`, depth first (symbolic links not followed).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

/// Entries that give group or others any access.
fn too_open(entries: &[PathBuf]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(p).ok()?;
            (!m.file_type().is_symlink() && m.mode() & 0o077 != 0).then(|| format!("{} {:o}", p.display(), m.mode()))
        })
        .collect()
}

/// `corral ARGS` as the workspace's owner would run it under a permissive umask.
fn lax(ws: &Ws, args: &[&str]) -> Output {
    let mut c = ws.cmd(args);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0);
            Ok(())
        })
    };
    c.output().unwrap()
}

fn lax_ok(ws: &Ws, args: &[&str]) -> String {
    let o = lax(ws, args);
    assert!(o.status.success(), "corral {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn other_user_reads_nothing_in_the_data_dir() {
    let Some(other) = OtherUser::create("users_read_data_dir") else { return };
    let ws = Ws::new();
    // A workspace others may enter, as most are.
    chmod(ws.path(), 0o755);
    let umask_file = ws.path().join("agent-umask");
    let script = format!(
        "umask > {u}; corral report --phase working --finding 'secret finding'; \
         corral handoff --summary done --status complete 2>/dev/null; echo output; exit 0",
        u = umask_file.display()
    );
    let mut spawn = ws.cmd(&["spawn", "--role", "r", "--task", "t", "--", "sh", "-c", &script]);
    spawn.env("CORRAL_TEST_SECRET", "sk-not-for-others");
    // SAFETY: umask is async-signal-safe.
    unsafe {
        spawn.pre_exec(|| {
            libc::umask(0);
            Ok(())
        })
    };
    let out = spawn.output().unwrap();
    assert!(out.status.success(), "spawn: {}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    ws.wait_state(&id, &["complete", "failed"], SECS(20));
    let _ = lax_ok(&ws, &["status"]);
    let _ = lax(&ws, &["aggregate", "--json"]);
    // The registry's write-ahead log holds the spawner's environment: proof it is there.
    let wal = ws.data.join("corral.db-wal");
    let entries = walk(&ws.data);
    let mut everything = vec![ws.data.clone()];
    everything.extend(entries.iter().cloned());
    let readable = other.readable(&everything);
    let open = too_open(&everything);
    let agent_umask = std::fs::read_to_string(&umask_file).unwrap_or_default();
    let umask_wrong = usize::from(agent_umask.trim() != "0000");

    // A data dir left open (an older corral, a lax umask): tightened when the supervisor starts.
    ws.ok(&["daemon", "stop"]);
    assert!(wait_until(SECS(10), || !ws.data.join("corral.sock").exists()));
    let mut before_restart = vec![ws.data.clone()];
    before_restart.extend(walk(&ws.data));
    for p in &before_restart {
        let m = std::fs::symlink_metadata(p).unwrap();
        if !m.file_type().is_symlink() {
            chmod(p, if m.is_dir() { 0o777 } else { 0o666 });
        }
    }
    let _ = lax_ok(&ws, &["status"]);
    let mut after = vec![ws.data.clone()];
    after.extend(walk(&ws.data));
    let readable_after = other.readable(&after);
    let open_after = too_open(&after);
    println!(
        "HOSTILE users_read_data_dir entries={} wal={} readable_by_other={} too_open={} agent_umask_wrong={} \
         after_restart_readable_by_other={} after_restart_too_open={}",
        everything.len(),
        wal.exists(),
        readable.len(),
        open.len(),
        umask_wrong,
        readable_after.len(),
        open_after.len()
    );
    assert!(everything.len() > 10, "too few files to judge: {everything:?}");
    assert_eq!(readable, Vec::<String>::new(), "readable by {}", other.name);
    assert_eq!(open, Vec::<String>::new());
    assert_eq!(umask_wrong, 0, "the agent ran with umask {agent_umask:?}, not the user's 0000");
    assert_eq!(readable_after, Vec::<String>::new(), "readable by {} after a restart", other.name);
    assert_eq!(open_after, Vec::<String>::new());
}

/// A workspace whose data dir path is too long for a socket, so its socket lives in a
/// per-user directory; `tmp` stands for /tmp (a sticky, world-writable directory).
fn long_path_ws(tmp: &Path, runtime: Option<&Path>) -> (Ws, impl Fn(&[&str]) -> Output) {
    let config = format!("data_dir = \"{}\"\n{RELAXED}", "d".repeat(110));
    let ws = Ws::with_config(Some(&config));
    let (tmp, runtime) = (tmp.to_path_buf(), runtime.map(Path::to_path_buf));
    let data = ws.data.clone();
    let root = ws.path().to_path_buf();
    let run = move |args: &[&str]| {
        let mut c = Command::new(bin());
        c.arg("--data-dir").arg(&data).args(args).current_dir(&root).env("TMPDIR", &tmp);
        for (k, _) in std::env::vars() {
            if k.starts_with("CORRAL_") {
                c.env_remove(k);
            }
        }
        match &runtime {
            Some(r) => c.env("XDG_RUNTIME_DIR", r),
            None => c.env_remove("XDG_RUNTIME_DIR"),
        };
        c.env("CORRAL_TEST_SECRET", "sk-not-for-others");
        c.output().unwrap()
    };
    (ws, run)
}

/// Where the supervisor of `run` listens: started once to ask, then stopped.
fn learn_socket(run: &dyn Fn(&[&str]) -> Output) -> PathBuf {
    let o = run(&["daemon", "status", "--json"]);
    if !o.status.success() {
        let o = run(&["status"]);
        assert!(o.status.success(), "status: {}", String::from_utf8_lossy(&o.stderr));
    }
    let o = run(&["daemon", "status", "--json"]);
    assert!(o.status.success(), "daemon status: {}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let socket = PathBuf::from(v["socket"].as_str().unwrap());
    let o = run(&["daemon", "stop"]);
    assert!(o.status.success());
    assert!(wait_until(SECS(10), || !socket.exists()), "socket {} stayed", socket.display());
    socket
}

/// Runs a spawn and a status against a planted socket directory and reports what leaked.
fn attempt_against(run: &dyn Fn(&[&str]) -> Output, planted: &Path) -> (usize, usize, String) {
    let mut refused = 0;
    let mut forged = 0;
    let mut said = String::new();
    for args in [&["spawn", "--role", "r", "--task", "t", "--", "true"][..], &["status", "--json"][..]] {
        let o = run(args);
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        if !o.status.success() && stderr.contains(planted.to_str().unwrap()) {
            refused += 1;
        }
        if stdout.contains("FORGED") {
            forged += 1;
        }
        said = stderr;
    }
    (refused, forged, said)
}

#[test]
fn planted_socket_directory_is_refused_and_gets_nothing() {
    let Some(other) = OtherUser::create("users_planted_socket_dir") else { return };
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o1777);
    let (ws, run) = long_path_ws(tmp.path(), None);
    let socket = learn_socket(&run);
    let dir = socket.parent().unwrap().to_path_buf();
    assert!(dir.starts_with(tmp.path()), "socket {} not in TMPDIR", socket.display());
    std::fs::remove_dir_all(&dir).unwrap();

    // 1. Another user made the directory first and listens in it.
    other.cmd("mkdir", &["-m", "755", dir.to_str().unwrap()]).status().unwrap();
    let listener = Listener::start(&other, &socket, &dir.join("got"));
    let (refused_foreign, forged_foreign, said) = attempt_against(&run, &dir);
    assert!(said.contains("belongs to uid"), "message: {said}");
    let got_foreign = listener.received();

    // 2. The directory is ours but anyone may write in it.
    chown(&dir, 0);
    chmod(&dir, 0o777);
    let (refused_open, forged_open, said_open) = attempt_against(&run, &dir);
    assert!(said_open.contains("writable by others"), "message: {said_open}");
    let got_open = listener.received();
    drop(listener);

    println!(
        "HOSTILE users_planted_socket_dir refused_not_ours={} refused_world_writable={} \
         connections_to_impostor={} bytes_to_impostor={} forged_replies={} unrefused={}",
        refused_foreign,
        refused_open,
        got_foreign.0 + got_open.0,
        got_foreign.1 + got_open.1,
        forged_foreign + forged_open,
        4 - refused_foreign - refused_open
    );
    assert_eq!((got_foreign, got_open), ((0, 0), (0, 0)), "the impostor received something");
    assert_eq!(forged_foreign + forged_open, 0);
    assert_eq!(refused_foreign + refused_open, 4, "every command must refuse, naming {}", dir.display());
    drop(ws);
}

#[test]
fn planted_runtime_directory_is_refused() {
    let Some(other) = OtherUser::create("users_planted_runtime_dir") else { return };
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o1777);
    let runtime = tempfile::tempdir().unwrap();
    // The user's runtime directory: theirs, closed to others' writes (others may pass).
    chmod(runtime.path(), 0o711);
    let (ws, run) = long_path_ws(tmp.path(), Some(runtime.path()));
    let socket = learn_socket(&run);
    let dir = socket.parent().unwrap().to_path_buf();
    assert!(dir.starts_with(runtime.path()), "socket {} not in XDG_RUNTIME_DIR", socket.display());
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    chown(&dir, other.uid);
    let listener = Listener::start(&other, &socket, &dir.join("got"));
    let (refused, forged, said) = attempt_against(&run, &dir);
    let got = listener.received();
    drop(listener);
    println!(
        "HOSTILE users_planted_runtime_dir refused={refused} connections_to_impostor={} bytes_to_impostor={} \
         forged_replies={forged} unrefused={}",
        got.0,
        got.1,
        2 - refused
    );
    assert!(said.contains("belongs to uid"), "message: {said}");
    assert_eq!(got, (0, 0));
    assert_eq!(forged, 0);
    assert_eq!(refused, 2);
    drop(ws);
}

#[test]
fn socket_served_by_another_user_is_refused_before_sending() {
    let Some(other) = OtherUser::create("users_foreign_socket") else { return };
    let ws = Ws::new();
    ws.ok(&["status"]);
    ws.ok(&["daemon", "stop"]);
    let ours = ws.data.join("corral.sock");
    assert!(wait_until(SECS(10), || !ours.exists()));
    // The other user's socket, bound where they may write, then put where ours belongs
    // (as if our data dir had been open to them).
    let theirs = tempfile::tempdir().unwrap();
    chown(theirs.path(), other.uid);
    let bound = theirs.path().join("s.sock");
    let listener = Listener::start(&other, &bound, &theirs.path().join("got"));
    std::fs::rename(&bound, &ours).unwrap();
    let mut refused = 0;
    let mut forged = 0;
    let mut said = String::new();
    for args in [&["spawn", "--role", "r", "--task", "t", "--", "true"][..], &["status", "--json"][..]] {
        let mut c = ws.cmd(args);
        c.env("CORRAL_TEST_SECRET", "sk-not-for-others");
        let o = c.output().unwrap();
        said = String::from_utf8_lossy(&o.stderr).to_string();
        if !o.status.success() && said.contains("served by uid") {
            refused += 1;
        }
        if String::from_utf8_lossy(&o.stdout).contains("FORGED") {
            forged += 1;
        }
    }
    let got = listener.received();
    drop(listener);
    let _ = std::fs::remove_file(&ours);
    println!(
        "HOSTILE users_foreign_socket refused={refused} bytes_to_impostor={} forged_replies={forged} unrefused={}",
        got.1,
        2 - refused
    );
    assert_eq!(got.1, 0, "the impostor received {} bytes", got.1);
    assert_eq!(forged, 0);
    assert_eq!(refused, 2, "last message: {said}");
}

#[test]
fn supervisor_answers_no_other_user() {
    let Some(other) = OtherUser::create("users_supervisor_peer") else { return };
    let ws = Ws::new();
    ws.ok(&["status"]);
    let socket = ws.data.join("corral.sock");
    // Opened up on purpose, so that only the supervisor's own check stands in the way.
    chmod(ws.path(), 0o755);
    chmod(&ws.data, 0o755);
    chmod(&socket, 0o666);
    let script = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n\
        got=b''\n\
        try:\n\
        \x20   s.sendall(b'{\"op\":\"ping\"}\\n{\"op\":\"status\",\"ids\":[],\"role\":null}\\n')\n\
        \x20   while True:\n\
        \x20       b=s.recv(65536)\n\
        \x20       if not b: break\n\
        \x20       got+=b\n\
        except Exception: pass\n\
        print(len(got))\n";
    let o = other.cmd(PYTHON, &["-c", script, socket.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let answered: u64 = stdout.trim().parse().unwrap_or_else(|_| {
        panic!("the other user's client failed: {} {}", stdout, String::from_utf8_lossy(&o.stderr))
    });
    // Still serving its own user.
    let still = ws.run(&["status"]).status.success();
    println!("HOSTILE users_supervisor_peer bytes_answered_to_other={answered} owner_refused={}", u8::from(!still));
    assert_eq!(answered, 0);
    assert!(still);
}
