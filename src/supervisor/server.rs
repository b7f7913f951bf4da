//! The control socket: accepts connections from the owner only, reads one request per
//! line (bounded), hands it to the supervisor loop and writes the reply. `events --follow`
//! streams from the broadcast of new events.

use super::daemon::Msg;
use crate::ipc::{MAX_REQUEST_BYTES, Reply, Request};
use crate::store::EventRecord;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

pub async fn serve(listener: UnixListener, tx: mpsc::UnboundedSender<Msg>, events: broadcast::Sender<EventRecord>) {
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // The socket file is 0600 already; checking the peer too costs nothing.
        match stream.peer_cred() {
            Ok(c) if c.uid() == me => {}
            _ => continue,
        }
        let tx = tx.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let _ = connection(stream, tx, events).await;
        });
    }
}

/// Reads one line of at most `MAX_REQUEST_BYTES`; `Ok(None)` at end of stream.
async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> std::io::Result<Option<Result<Vec<u8>, String>>> {
    let mut buf = Vec::new();
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() { None } else { Some(Ok(buf)) });
        }
        if let Some(i) = chunk.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&chunk[..i]);
            r.consume(i + 1);
            return Ok(Some(Ok(buf)));
        }
        let n = chunk.len();
        buf.extend_from_slice(chunk);
        r.consume(n);
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(Some(Err(format!("request larger than {MAX_REQUEST_BYTES} bytes refused"))));
        }
    }
}

async fn write_json<W: AsyncWrite + Unpin>(w: &mut W, v: &impl serde::Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

async fn connection(
    stream: UnixStream,
    tx: mpsc::UnboundedSender<Msg>,
    events: broadcast::Sender<EventRecord>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    while let Some(line) = read_line(&mut r).await? {
        let req = match line {
            Err(e) => {
                write_json(&mut w, &Reply::err(2, e)).await?;
                return Ok(());
            }
            Ok(bytes) => match serde_json::from_slice::<Request>(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    write_json(&mut w, &Reply::err(2, format!("malformed request: {e}"))).await?;
                    continue;
                }
            },
        };
        if let Request::Events { after, agent, follow: true } = req {
            return follow_events(&mut w, tx, events, after, agent).await;
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx.send(Msg::Request(req, reply_tx)).is_err() {
            return Ok(());
        }
        let reply = reply_rx.await.unwrap_or_else(|_| Reply::err(1, "supervisor is shutting down"));
        write_json(&mut w, &reply).await?;
    }
    Ok(())
}

/// Backlog from the store, then live events. Subscribing before reading the backlog means
/// nothing falls between the two; sequence numbers drop the overlap.
async fn follow_events<W: AsyncWrite + Unpin>(
    w: &mut W,
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
    loop {
        match live.recv().await {
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
                return Box::pin(follow_events(w, tx, events, after, agent)).await;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
