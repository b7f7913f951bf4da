//! The control socket: accepts connections from the owner only, reads one request per
//! line (bounded), hands it to the supervisor loop and writes the reply. `events --follow`
//! streams from the broadcast of new events.

use super::connections::{MAX_BUFFERED_TOTAL, State, Table, Want};
use super::daemon::Msg;
use crate::ipc::{MAX_REQUEST_BYTES, Reply, Request};
use crate::store::EventRecord;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

/// What the server's tasks share: the connection table, and a signal that one has ended.
struct Shared {
    table: Mutex<Table>,
    closed: Notify,
    /// Connections open now, shared with the supervisor (an idle one exits only with none).
    clients: Arc<AtomicUsize>,
    tx: mpsc::UnboundedSender<Msg>,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic elsewhere cannot leave the table half-changed: every change is one call.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Descriptors kept free of connections, for what the supervisor opens for its agents
/// (pidfds, run files, logs, contexts, the registry): an eighth of the limit, at least 32.
fn fd_reserve(limit: u64) -> u64 {
    (limit / 8).clamp(32, 4096)
}

/// How many descriptors are free, from a count of the open ones taken now and then (more
/// often near the limit) and the connections opened or closed since.
struct FdGauge {
    limit: u64,
    reserve: u64,
    others: u64,
    measured: Option<Instant>,
}

impl FdGauge {
    fn free(&mut self, conns: usize, now: Instant) -> u64 {
        let conns = conns as u64;
        let free = self.limit.saturating_sub(self.others + conns);
        let stale = match self.measured {
            None => true,
            Some(t) if free < 2 * self.reserve => now - t >= Duration::from_millis(5),
            Some(t) => now - t >= Duration::from_secs(1),
        };
        if !stale {
            return free;
        }
        match open_fds() {
            Some(open) => {
                self.others = open.saturating_sub(conns);
                self.measured = Some(now);
                self.limit.saturating_sub(open)
            }
            // Not even /proc/self/fd could be opened: nothing is free.
            None => 0,
        }
    }
}

/// Open descriptors of this process.
fn open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    // The listing's own descriptor was counted and is closed again.
    Some(n.saturating_sub(1))
}

pub async fn serve(
    listener: UnixListener,
    tx: mpsc::UnboundedSender<Msg>,
    events: broadcast::Sender<EventRecord>,
    fd_limit: u64,
    clients: Arc<AtomicUsize>,
) {
    let me = crate::protocol::perms::my_uid();
    let shared =
        Arc::new(Shared { table: Mutex::new(Table::default()), closed: Notify::new(), clients, tx: tx.clone() });
    let reserve = fd_reserve(fd_limit);
    let mut gauge = FdGauge { limit: fd_limit, reserve, others: 0, measured: None };
    loop {
        // Room first: the descriptor an accept takes must never be one the agents need.
        let conns = shared.table().len();
        if gauge.free(conns, Instant::now()) <= reserve {
            if make_room(&shared).await {
                continue;
            }
            // Every connection is in the middle of a request: take no more until one ends.
            let _ = tokio::time::timeout(Duration::from_millis(100), shared.closed.notified()).await;
            gauge.measured = None;
            continue;
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (ours or the system's), or a passing failure: shed a
                // connection or wait a little, but never try again at once (that spins).
                let pause = if is_resource_shortage(&e) {
                    gauge.measured = None;
                    if make_room(&shared).await { Duration::ZERO } else { Duration::from_millis(50) }
                } else {
                    Duration::from_millis(1) // a client that left before it was accepted
                };
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        // The socket file is 0600 already; checking the peer too costs nothing.
        match stream.peer_cred() {
            Ok(c) if c.uid() == me => {}
            _ => continue,
        }
        let id = shared.table().open(Instant::now());
        shared.clients.fetch_add(1, Ordering::Relaxed);
        let conn = Registered { id, shared: shared.clone() };
        let task = tokio::spawn(connection(stream, tx.clone(), events.clone(), conn));
        shared.table().attach(id, task.abort_handle());
    }
}

fn is_resource_shortage(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Sheds one connection to free a descriptor, and lets its task be dropped (which closes
/// it). Whether there was one to shed.
async fn make_room(shared: &Shared) -> bool {
    let shed = {
        let mut table = shared.table();
        table.shed(None, Want::Descriptor) || table.shed(None, Want::DescriptorOrPartial)
    };
    if shed {
        tokio::task::yield_now().await;
    }
    shed
}

/// A connection's entry in the table, removed however its task ends (aborted included).
struct Registered {
    id: u64,
    shared: Arc<Shared>,
}

impl Registered {
    fn set(&self, state: State) {
        self.shared.table().set(self.id, state, Instant::now());
    }

    /// Records that this connection now holds `held` bytes of an unfinished request; past
    /// the total for all connections, the oldest other half-sent requests give way, and if
    /// none can, this one is refused.
    fn hold(&self, held: usize) -> Result<(), String> {
        let mut table = self.shared.table();
        table.set(self.id, State::Partial(held), Instant::now());
        while table.buffered() > MAX_BUFFERED_TOTAL {
            if !table.shed(Some(self.id), Want::Memory) {
                return Err(format!(
                    "the supervisor holds {MAX_BUFFERED_TOTAL} bytes of unfinished requests already; send the \
                     request again"
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.table().close(self.id);
        self.shared.closed.notify_one();
        if self.shared.clients.fetch_sub(1, Ordering::Relaxed) == 1 {
            let _ = self.shared.tx.send(Msg::ClientsGone);
        }
    }
}

/// Reads one line of at most `MAX_REQUEST_BYTES`; `Ok(None)` at end of stream.
async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    conn: &Registered,
) -> std::io::Result<Option<Result<Vec<u8>, String>>> {
    let mut buf = Vec::new();
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() { None } else { Some(Ok(buf)) });
        }
        if let Some(i) = chunk.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&chunk[..i]);
            r.consume(i + 1);
            conn.set(State::Busy);
            return Ok(Some(Ok(buf)));
        }
        let n = chunk.len();
        buf.extend_from_slice(chunk);
        r.consume(n);
        if buf.len() > MAX_REQUEST_BYTES {
            conn.set(State::Busy);
            return Ok(Some(Err(format!("request larger than {MAX_REQUEST_BYTES} bytes refused"))));
        }
        if let Err(e) = conn.hold(buf.len()) {
            conn.set(State::Busy);
            return Ok(Some(Err(e)));
        }
    }
}

async fn write_json<W: AsyncWrite + Unpin>(w: &mut W, v: &impl serde::Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

/// How long a client may take to read its reply. One that never does would hold its
/// connection (and descriptor) for good, and a connection with a reply due is never shed.
const REPLY_PATIENCE: Duration = Duration::from_secs(60);

async fn reply<W: AsyncWrite + Unpin>(w: &mut W, r: &Reply) -> std::io::Result<()> {
    match tokio::time::timeout(REPLY_PATIENCE, write_json(w, r)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client does not read its reply")),
    }
}

async fn connection(
    stream: UnixStream,
    tx: mpsc::UnboundedSender<Msg>,
    events: broadcast::Sender<EventRecord>,
    conn: Registered,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    while let Some(line) = read_line(&mut r, &conn).await? {
        let req = match line {
            Err(e) => {
                reply(&mut w, &Reply::err(2, e)).await?;
                return Ok(());
            }
            Ok(bytes) => match serde_json::from_slice::<Request>(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    reply(&mut w, &Reply::err(2, format!("malformed request: {e}"))).await?;
                    conn.set(State::Idle);
                    continue;
                }
            },
        };
        if let Request::Events { after, agent, follow: true } = req {
            conn.set(State::Following);
            return follow_events(&mut w, &mut r, tx, events, after, agent).await;
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx.send(Msg::Request(req, reply_tx)).is_err() {
            return Ok(());
        }
        let answer = reply_rx.await.unwrap_or_else(|_| Reply::err(1, "supervisor is shutting down"));
        reply(&mut w, &answer).await?;
        conn.set(State::Idle);
    }
    Ok(())
}

/// Backlog from the store, then live events. Subscribing before reading the backlog means
/// nothing falls between the two; sequence numbers drop the overlap.
async fn follow_events<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    w: &mut W,
    r: &mut R,
    tx: mpsc::UnboundedSender<Msg>,
    events: broadcast::Sender<EventRecord>,
    mut after: u64,
    agent: Option<String>,
) -> std::io::Result<()> {
    let mut live = events.subscribe();
    loop {
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx.send(Msg::Request(Request::Events { after, agent: agent.clone(), follow: false }, reply_tx)).is_err() {
            return Ok(());
        }
        let Ok(reply) = reply_rx.await else {
            return Ok(());
        };
        if !reply.ok {
            return write_json(w, &reply).await;
        }
        let backlog: Vec<EventRecord> = reply.parse().unwrap_or_default();
        for e in &backlog {
            write_json(w, e).await?;
            after = e.seq;
        }
        if backlog.len() < super::daemon::EVENTS_PAGE {
            break;
        }
    }
    w.flush().await?;
    let mut scratch = [0u8; 256];
    loop {
        // A follower that left is noticed at once (not at the next event): an idle
        // supervisor counts its clients.
        let next = tokio::select! {
            e = live.recv() => e,
            n = tokio::io::AsyncReadExt::read(r, &mut scratch) => match n {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
        };
        match next {
            Ok(e) => {
                if e.seq <= after
                    || agent.as_deref().is_some_and(|a| e.agent_id.as_ref().is_none_or(|x| x.as_str() != a))
                {
                    continue;
                }
                after = e.seq;
                write_json(w, &e).await?;
            }
            // Fell behind: the store has everything, so nothing is lost by resyncing.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                return Box::pin(follow_events(w, r, tx, events, after, agent)).await;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
