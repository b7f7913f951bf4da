//! Wake-ups for `wait`, `events -f`, `monitor` and a worker's command loop: LISTEN on the
//! workspace's channel, with a slow poll behind it. Every transaction that appends events
//! notifies the last number it gave, every new command its id; both are hints only. The
//! listener also reads both heads by SQL every `poll` (and right after each (re)connect), so
//! a lost notification or a dropped LISTEN connection costs at most one poll; the
//! connection is pinged every `ping` because a dead LISTEN connection is otherwise silent.
//! Readers always re-read from the last number they saw, never trust the payload alone.

use super::Database;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;

/// How the listener polls and pings.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// The heads are read by SQL this often, notifications or not.
    pub poll: Duration,
    /// The LISTEN connection is pinged this often; no answer within `ping` reconnects.
    pub ping: Duration,
    /// Wait this long before connecting again after the connection failed.
    pub reconnect: Duration,
    /// The connection's `application_name`, so an operator can find it in
    /// `pg_stat_activity`.
    pub application_name: String,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            ping: Duration::from_secs(5),
            reconnect: Duration::from_millis(500),
            application_name: "corral-listener".into(),
        }
    }
}

/// What the listener knows of the workspace: the last event number and command id it has
/// seen (by notification or by poll), and how often it has connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    pub events: i64,
    pub commands: i64,
    pub connects: u64,
}

/// A running listener: a task on the current tokio runtime, stopped when this is dropped.
pub struct Listener {
    head: watch::Receiver<Head>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Starts listening on `workspace`'s channel (connecting in the background, and again
    /// whenever the connection is lost).
    pub fn start(db: &Database, workspace: &str, opts: ListenOptions) -> Self {
        let (tx, head) = watch::channel(Head::default());
        let mut config = db.config.clone();
        config.application_name(&opts.application_name);
        let workspace = workspace.to_string();
        let task = tokio::spawn(async move {
            loop {
                let _ = session(&config, &workspace, &opts, &tx).await;
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(opts.reconnect).await;
            }
        });
        Self { head, task }
    }

    /// What is known now.
    pub fn head(&self) -> Head {
        *self.head.borrow()
    }

    /// Waits until the head moves past what this listener last returned, and returns it.
    pub async fn changed(&mut self) -> Head {
        if self.head.changed().await.is_err() {
            // The task ended (it does not, short of a panic): nothing more will come.
            std::future::pending::<()>().await;
        }
        *self.head.borrow_and_update()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Raises the published head to `events`/`commands`, waking waiters only if it moved.
fn raise(tx: &watch::Sender<Head>, events: i64, commands: i64) {
    tx.send_if_modified(|h| {
        let moved = events > h.events || commands > h.commands;
        h.events = h.events.max(events);
        h.commands = h.commands.max(commands);
        moved
    });
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// One connection's life: LISTEN, read the heads, then follow notifications, polls and
/// pings until something fails.
async fn session(
    config: &tokio_postgres::Config,
    workspace: &str,
    opts: &ListenOptions,
    tx: &watch::Sender<Head>,
) -> Result<(), String> {
    let connect = tokio::time::timeout(opts.ping.max(Duration::from_secs(1)), config.connect(tokio_postgres::NoTls));
    let (client, mut conn) = connect.await.map_err(|_| "connect timed out".to_string())?.map_err(|e| e.to_string())?;
    let (ntx, mut nrx) = mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m
                && ntx.send(n.payload().to_string()).is_err()
            {
                break;
            }
        }
    });
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _driver = Abort(driver);
    client
        .batch_execute(&format!("LISTEN {}", quote_ident(&super::channel(workspace))))
        .await
        .map_err(|e| e.to_string())?;
    // Listening already: anything committed from here on is notified or read below.
    let (e, c) = read_heads(&client, workspace, opts.ping).await?;
    tx.send_modify(|h| h.connects += 1);
    raise(tx, e, c);
    let mut poll = tokio::time::interval(opts.poll);
    let mut ping = tokio::time::interval(opts.ping);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = nrx.recv() => {
                let Some(payload) = n else { return Err("the LISTEN connection closed".into()) };
                if let Ok(seq) = payload.parse::<i64>() {
                    raise(tx, seq, 0);
                } else if let Some(id) = payload.strip_prefix("command ").and_then(|x| x.parse::<i64>().ok()) {
                    raise(tx, 0, id);
                }
            }
            _ = poll.tick() => {
                let (e, c) = read_heads(&client, workspace, opts.ping).await?;
                raise(tx, e, c);
            }
            _ = ping.tick() => {
                let q = tokio::time::timeout(opts.ping, client.simple_query("SELECT 1"));
                q.await.map_err(|_| "ping timed out".to_string())?.map_err(|e| e.to_string())?;
            }
        }
        if tx.is_closed() {
            return Ok(());
        }
    }
}

/// The workspace's last event number and last command id, by SQL.
async fn read_heads(client: &tokio_postgres::Client, workspace: &str, limit: Duration) -> Result<(i64, i64), String> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&workspace];
    let q = client.query_opt(
        "SELECT w.event_seq, (SELECT COALESCE(max(id), 0) FROM commands WHERE workspace = $1)
         FROM workspaces w WHERE w.id = $1",
        &params,
    );
    match tokio::time::timeout(limit, q).await.map_err(|_| "poll timed out".to_string())?.map_err(|e| e.to_string())? {
        Some(r) => Ok((r.get(0), r.get(1))),
        None => Ok((0, 0)),
    }
}
