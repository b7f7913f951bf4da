//! Cluster mode's store against a real PostgreSQL: a throw-away server per test (initdb as
//! the `postgres` user when run as root, TCP on 127.0.0.1 only, stopped at the end). The
//! test command installs PostgreSQL when it is missing.

use corral::cluster::{Database, PasswordSources, schema};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PASSWORD: &str = "s3cret-Pw";

struct Pg {
    dir: tempfile::TempDir,
    port: u16,
    pid: i32,
}

fn pg_bin() -> PathBuf {
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
    fn start() -> Self {
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

    fn url(&self, db: &str) -> String {
        format!("postgres://corral@127.0.0.1:{}/{db}", self.port)
    }

    fn sql(&self, db: &str, sql: &str) -> String {
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

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn with_password() -> PasswordSources {
    PasswordSources { password: Some(PASSWORD.into()), passfile: None }
}

#[test]
fn several_workers_migrating_at_once_apply_each_step_once() {
    let pg = Pg::start();
    let url = pg.url("corral");
    let results: Vec<schema::Migrated> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    block_on(async {
                        let db = Database::parse(&url, &with_password()).unwrap();
                        let mut c = db.connect().await.unwrap();
                        schema::migrate(&mut c).await.unwrap()
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let appliers: Vec<_> = results.iter().filter(|m| !m.applied.is_empty()).collect();
    println!("CLUSTER migrate concurrent=6 appliers={} latest={}", appliers.len(), schema::latest());
    assert_eq!(appliers.len(), 1, "{results:?}");
    assert_eq!(appliers[0].from, 0);
    assert_eq!(appliers[0].applied, (1..=schema::latest()).collect::<Vec<_>>());
    assert!(results.iter().all(|m| m.to == schema::latest()), "{results:?}");
    assert_eq!(pg.sql("corral", "SELECT count(*) FROM corral_schema"), schema::latest().to_string());
    let tables = pg.sql(
        "corral",
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'",
    );
    assert_eq!(tables, "agents,commands,corral_schema,escalations,events,handoffs,kv,reports,workers,workspaces");
    // Again: nothing to do.
    let again = block_on(async {
        let mut c = Database::parse(&url, &with_password()).unwrap().connect().await.unwrap();
        schema::migrate(&mut c).await.unwrap()
    });
    assert_eq!(again, schema::Migrated { from: schema::latest(), to: schema::latest(), applied: vec![] });
}

#[test]
fn a_schema_newer_than_this_corral_is_refused_and_left_alone() {
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = Database::parse(&url, &with_password()).unwrap().connect().await.unwrap();
        schema::migrate(&mut c).await.unwrap();
    });
    pg.sql("corral", "INSERT INTO corral_schema (version, name) VALUES (999, 'from the future')");
    let err = block_on(async {
        let mut c = Database::parse(&url, &with_password()).unwrap().connect().await.unwrap();
        schema::migrate(&mut c).await.unwrap_err()
    });
    assert!(err.contains("version 999") && err.contains("upgrade corral"), "{err}");
    assert_eq!(pg.sql("corral", "SELECT max(version) FROM corral_schema"), "999");
}

#[test]
fn the_password_comes_from_a_password_file_and_errors_never_show_it() {
    let pg = Pg::start();
    let url = pg.url("corral");
    // No password at all: a clear refusal naming the server, not the password.
    let err = block_on(async {
        Database::parse(&url, &PasswordSources::default()).unwrap().connect().await.map(|_| ()).unwrap_err()
    });
    assert!(err.contains("cannot connect") && err.contains(&format!("127.0.0.1:{}/corral", pg.port)), "{err}");
    // A password file (mode 0600) as libpq reads it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    std::fs::write(&file, format!("# corral's tests\n127.0.0.1:{}:*:corral:{PASSWORD}\n", pg.port)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let from_file = PasswordSources { password: None, passfile: Some(file.clone()) };
    let m = block_on(async {
        let mut c = Database::parse(&url, &from_file).unwrap().connect().await.unwrap();
        schema::migrate(&mut c).await.unwrap()
    });
    assert_eq!(m.to, schema::latest());
    // A wrong password: refused, and the message does not carry it.
    let wrong = PasswordSources { password: Some("not-it-42".into()), passfile: None };
    let err = block_on(async { Database::parse(&url, &wrong).unwrap().connect().await.map(|_| ()).unwrap_err() });
    assert!(err.contains("cannot connect") && !err.contains("not-it-42"), "{err}");
}
