//! Cluster mode's store: the registry and queue in PostgreSQL. This module holds what every
//! worker and client needs before anything else: reaching the database (with the password
//! from the URL, `PGPASSWORD` or a password file, as libpq users expect) and the versioned
//! schema that corral creates and migrates itself; [`queue`] holds the leases, claims, fenced
//! writes and re-queue of lost agents that every worker runs; [`capacity`] holds what
//! `parallel`, `pause` and `resume` change at run time over the configured limits;
//! [`commands`] carries kill, retry and tell from any machine to the worker that owns the
//! agent; [`listen`] turns LISTEN/NOTIFY into wake-ups with a slow poll behind them;
//! [`read`] is what `status` and `events` read on a machine with no worker.

pub mod capacity;
pub mod commands;
pub mod direct;
pub mod listen;
pub mod queue;
pub mod read;
pub mod schema;
pub mod worker;

/// The database and workspace name this invocation works with in cluster mode, if any: the
/// URL from `flag`, else `CORRAL_DATABASE_URL`, else `[cluster] database`; the workspace from
/// `name`, else `CORRAL_WORKSPACE`, else `[cluster] workspace`, else the workspace
/// directory's name. `None`: no
/// database anywhere, single-machine mode.
pub fn target(
    ws: &crate::config::Workspace,
    flag: Option<&str>,
    name: Option<&str>,
) -> Result<Option<(Database, String)>, String> {
    let env = std::env::var("CORRAL_DATABASE_URL").ok().filter(|u| !u.trim().is_empty());
    let url = match flag.map(str::to_string).or(env).or_else(|| ws.config.cluster.database.clone()) {
        Some(u) => u,
        None => return Ok(None),
    };
    let db = Database::parse(&url, &PasswordSources::from_env())?;
    let workspace = name
        .map(str::to_string)
        .or_else(|| std::env::var("CORRAL_WORKSPACE").ok().filter(|w| !w.is_empty()))
        .or_else(|| ws.config.cluster.workspace.clone())
        .or_else(|| ws.root.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "default".into());
    if workspace.is_empty() || workspace.len() > 200 || workspace.chars().any(char::is_control) {
        return Err(format!(
            "cluster workspace name {workspace:?} is not usable: give 1 to 200 printable characters (--workspace or \
             [cluster] workspace)"
        ));
    }
    Ok(Some((db, workspace)))
}

/// The NOTIFY channel of `workspace`: `corral:<workspace>` when that is a short plain name,
/// else `corral#<hash>` (channel names are identifiers of at most 63 bytes).
pub fn channel(workspace: &str) -> String {
    let plain =
        workspace.len() <= 48 && workspace.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plain {
        format!("corral:{workspace}")
    } else {
        // FNV-1a: stable across machines and versions, unlike std's hasher.
        let h = workspace.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        format!("corral#{h:016x}")
    }
}

use std::path::{Path, PathBuf};
use tokio_postgres::config::Host;

/// Where the database is, as given (a `postgres://` URL or a libpq key=value string), with
/// the password filled in from the environment when the URL has none.
#[derive(Debug, Clone)]
pub struct Database {
    pub config: tokio_postgres::Config,
}

/// What [`Database::parse`] needs from the environment, passed in so it stays testable.
#[derive(Debug, Default, Clone)]
pub struct PasswordSources {
    /// `PGPASSWORD`.
    pub password: Option<String>,
    /// `PGPASSFILE`, else `~/.pgpass`.
    pub passfile: Option<PathBuf>,
}

impl PasswordSources {
    pub fn from_env() -> Self {
        let password = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty());
        let passfile = std::env::var_os("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")));
        Self { password, passfile }
    }
}

impl Database {
    /// Parses `url`; a URL without a password takes `PGPASSWORD`, else the first matching
    /// line of the password file (which, as with libpq, is ignored when others may read it).
    pub fn parse(url: &str, env: &PasswordSources) -> Result<Self, String> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            format!("database URL {:?} is not valid: {e}; expected e.g. postgres://USER@HOST:5432/DB", redact(url))
        })?;
        if config.get_user().is_none()
            && let Ok(user) = std::env::var("PGUSER").or_else(|_| std::env::var("USER"))
        {
            config.user(&user);
        }
        if config.get_password().is_none() {
            if let Some(p) = &env.password {
                config.password(p.as_str());
            } else if let Some(file) = &env.passfile
                && let Some(p) = passfile_lookup(file, &config)
            {
                config.password(p.as_str());
            }
        }
        Ok(Self { config })
    }

    /// Connects, running the connection's I/O on the current tokio runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, String> {
        let (client, conn) = self
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("cannot connect to the database at {}: {e}", self.describe()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// What an agent of a worker is given to reach the same database: `CORRAL_DATABASE_URL`
    /// as a libpq key=value string without the password, and the password (however the
    /// worker found it) as `PGPASSWORD`, which every PostgreSQL client reads.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let c = &self.config;
        let mut parts = Vec::new();
        let hosts: Vec<String> = c
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        if !hosts.is_empty() {
            parts.push(format!("host={}", quote(&hosts.join(","))));
        }
        let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
        if !ports.is_empty() {
            parts.push(format!("port={}", ports.join(",")));
        }
        if let Some(u) = c.get_user() {
            parts.push(format!("user={}", quote(u)));
        }
        if let Some(d) = c.get_dbname() {
            parts.push(format!("dbname={}", quote(d)));
        }
        if let Some(t) = c.get_connect_timeout() {
            parts.push(format!("connect_timeout={}", t.as_secs().max(1)));
        }
        let mut env = vec![("CORRAL_DATABASE_URL".to_string(), parts.join(" "))];
        if let Some(p) = c.get_password() {
            env.push(("PGPASSWORD".into(), String::from_utf8_lossy(p).into_owned()));
        }
        env
    }

    /// host:port/db for messages, never the password.
    pub fn describe(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}/{}", self.config.get_dbname().unwrap_or("(default database)"))
    }
}

/// The URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The password for `config` in a libpq password file: lines `host:port:database:user:password`,
/// `*` matching anything, `\:` and `\\` escaped, `#` comments. A file that group or others may
/// read, or that is not a regular file, is ignored (libpq does the same).
pub fn passfile_lookup(file: &Path, config: &tokio_postgres::Config) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() || meta.mode() & 0o077 != 0 || meta.len() > 1 << 20 {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        // libpq matches a socket connection with "localhost".
        Some(Host::Unix(_)) | None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    let db = config.get_dbname().map(str::to_string).unwrap_or_else(|| user.clone());
    passfile_match(&text, [&host, &port, &db, &user])
}

/// The first line of a password file's `text` whose four fields match `want`.
pub fn passfile_match(text: &str, want: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_escaped(line);
        if fields.len() != 5 {
            continue;
        }
        if fields[..4].iter().zip(want).all(|(f, w)| f == "*" || f == w) {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_escaped(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().unwrap().push(n);
                }
            }
            // The password is the rest of the line, colons and all.
            ':' if out.len() < 5 => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_file_lines_match_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    db.example:5432:other:alice:nope\n\
                    db.example:*:corral:alice:pa\\:ss:word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(passfile_match(text, ["db.example", "5432", "corral", "alice"]).as_deref(), Some("pa:ss:word"));
        assert_eq!(passfile_match(text, ["db.example", "5432", "other", "alice"]).as_deref(), Some("nope"));
        assert_eq!(passfile_match(text, ["elsewhere", "1", "x", "y"]).as_deref(), Some("fallback"));
        assert_eq!(passfile_match("short:line\n", ["a", "b", "c", "d"]), None);
    }

    #[test]
    fn the_password_comes_from_the_url_then_pgpassword_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "127.0.0.1:5433:corral:bob:from-file\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let url = "postgres://bob@127.0.0.1:5433/corral";
        let from_file = PasswordSources { password: None, passfile: Some(file.clone()) };
        let got = Database::parse(url, &from_file).unwrap();
        assert_eq!(got.config.get_password(), Some(&b"from-file"[..]));
        let from_env = PasswordSources { password: Some("from-env".into()), passfile: Some(file.clone()) };
        assert_eq!(Database::parse(url, &from_env).unwrap().config.get_password(), Some(&b"from-env"[..]));
        let in_url = Database::parse("postgres://bob:inline@127.0.0.1:5433/corral", &from_env).unwrap();
        assert_eq!(in_url.config.get_password(), Some(&b"inline"[..]));
        // A file others may read is ignored, as libpq does.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(Database::parse(url, &from_file).unwrap().config.get_password(), None);
    }

    #[test]
    fn channels_are_the_workspace_name_when_plain_else_a_stable_hash() {
        assert_eq!(channel("team-a.1"), "corral:team-a.1");
        let odd = channel("Team \"A\"; drop");
        assert!(odd.starts_with("corral#") && odd.len() == 23, "{odd}");
        assert_eq!(odd, channel("Team \"A\"; drop"));
        assert_ne!(channel(&"x".repeat(49)), channel(&"x".repeat(50)));
        assert!(channel(&"x".repeat(200)).len() <= 63);
    }

    #[test]
    fn an_agent_reaches_the_same_database_with_the_password_apart() {
        let none = PasswordSources::default();
        let db =
            Database::parse("postgres://al%20ice:s3cr%27t@db.example:6543/co'rral?connect_timeout=4", &none).unwrap();
        let env = db.agent_env();
        let url = &env[0].1;
        assert!(!url.contains("s3cr"), "{url}");
        assert_eq!(env[1], ("PGPASSWORD".to_string(), "s3cr't".to_string()));
        // The key=value string parses back to the same place.
        let back = Database::parse(url, &PasswordSources { password: Some(env[1].1.clone()), passfile: None }).unwrap();
        assert_eq!(back.config.get_user(), Some("al ice"));
        assert_eq!(back.config.get_dbname(), Some("co'rral"));
        assert_eq!(back.config.get_ports(), &[6543]);
        assert_eq!(back.describe(), "db.example:6543/co'rral");
        assert_eq!(back.config.get_password(), Some(&b"s3cr't"[..]));
        let sock = Database::parse("host=/var/run/postgresql dbname=x user=u", &none).unwrap();
        assert_eq!(sock.agent_env().len(), 1, "no password, none passed");
        let back = Database::parse(&sock.agent_env()[0].1, &none).unwrap();
        assert_eq!(back.describe(), "/var/run/postgresql:5432/x");
    }

    #[test]
    fn a_bad_url_is_refused_without_showing_the_password() {
        let e = Database::parse("postgres://bob:secret@host:notaport/db", &PasswordSources::default()).unwrap_err();
        assert!(e.contains("not valid") && !e.contains("secret"), "{e}");
    }
}
