//! A throw-away PostgreSQL server for tests: initdb as the `postgres` user when run as root
//! (initdb refuses root), TCP on 127.0.0.1 only, stopped (SIGQUIT, then SIGKILL) when dropped.
//! The test command installs PostgreSQL when it is missing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "s3cret-Pw";

pub struct Pg {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub pid: i32,
}

pub fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (./scripts/test.sh installs it)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    dirs.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()));
    dirs.pop().expect("an initdb under /usr/lib/postgresql/*/bin")
}

/// `prog args` as the `postgres` user when we are root (initdb refuses root).
fn as_pg_user(prog: &Path) -> Command {
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(prog);
        c
    } else {
        Command::new(prog)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Pg {
    /// A new server: the `corral` superuser with password [`PASSWORD`] over TCP (SCRAM), and
    /// a database `corral`.
    pub fn start() -> Self {
        let bin = pg_bin();
        let dir = tempfile::Builder::new().prefix("corral-pg").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, PASSWORD).unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let data = dir.path().join("data");
        let st = as_pg_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "corral", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C.UTF-8", "--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", pw.display()))
            .output()
            .unwrap();
        assert!(st.status.success(), "initdb: {}", String::from_utf8_lossy(&st.stderr));
        for _ in 0..5 {
            let port = free_port();
            let opts = format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                dir.path().display()
            );
            let st = as_pg_user(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("server.log"))
                .args(["-w", "-t", "30", "-o", &opts, "start"])
                .output()
                .unwrap();
            if st.status.success() {
                let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
                let pid = pid.lines().next().unwrap().trim().parse().unwrap();
                let pg = Pg { dir, port, pid };
                pg.sql("postgres", "CREATE DATABASE corral");
                return pg;
            }
        }
        panic!(
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
    }

    fn opts(&self) -> String {
        format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        )
    }

    /// `pg_ctl ARGS` on this server's data, which must succeed.
    fn pg_ctl(&self, args: &[&str]) {
        let st = as_pg_user(&pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&st.stdout),
            String::from_utf8_lossy(&st.stderr)
        );
    }

    fn read_pid(&mut self) {
        let pid = std::fs::read_to_string(self.dir.path().join("data").join("postmaster.pid")).unwrap();
        self.pid = pid.lines().next().unwrap().trim().parse().unwrap();
    }

    /// Stops the server (fast shutdown: clients are cut off) and starts it again on the
    /// same port and data.
    pub fn restart(&mut self) {
        let opts = self.opts();
        self.pg_ctl(&["-w", "-t", "30", "-m", "fast", "-o", &opts, "restart"]);
        self.read_pid();
    }

    /// Stops the server (fast shutdown: clients are cut off) until [`Pg::start_again`].
    pub fn stop(&mut self) {
        self.pg_ctl(&["-w", "-t", "30", "-m", "fast", "stop"]);
    }

    /// Starts a server stopped by [`Pg::stop`] again, on the same port and data.
    pub fn start_again(&mut self) {
        let opts = self.opts();
        self.pg_ctl(&["-w", "-t", "30", "-o", &opts, "start"]);
        self.read_pid();
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://corral@127.0.0.1:{}/{db}", self.port)
    }

    pub fn sql(&self, db: &str, sql: &str) -> String {
        let o = Command::new(pg_bin().join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "corral", "-d", db, "-c", sql])
            .output()
            .unwrap();
        assert!(o.status.success(), "{sql}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // Immediate shutdown, by pid, bounded.
        unsafe { libc::kill(self.pid, libc::SIGQUIT) };
        let end = Instant::now() + Duration::from_secs(10);
        while unsafe { libc::kill(self.pid, 0) } == 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}
