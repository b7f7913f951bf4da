//! `corral events [-f]`: the event log as JSON lines.

use super::{Ctx, Result, into_result};
use crate::ipc::{Reply, Request};
use crate::store::EventRecord;
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the stream open and print new events as they happen.
    #[arg(short, long)]
    pub follow: bool,
    /// Only this agent's events.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only events after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Accepted for symmetry with other read commands: the output is always JSON lines.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let mut client = ctx.client()?;
    let agent = a.agent.clone();
    client.send(&Request::Events { after: a.after, agent: a.agent, follow: a.follow })?;
    let mut out = std::io::stdout().lock();
    if !a.follow {
        // Page by page: the log can hold millions of events.
        let mut after = a.after;
        loop {
            let line = client.read_line()?.ok_or_else(|| super::Fail { code: 1, msg: "no reply".into() })?;
            let data = into_result(serde_json::from_str::<Reply>(&line)?)?;
            let events: Vec<EventRecord> = serde_json::from_value(data)?;
            for e in &events {
                serde_json::to_writer(&mut out, e)?;
                writeln!(out)?;
                after = e.seq;
            }
            if events.len() < crate::supervisor::daemon::EVENTS_PAGE {
                return Ok(0);
            }
            client.send(&Request::Events { after, agent: agent.clone(), follow: false })?;
        }
    }
    while let Some(line) = client.read_line()? {
        if let Ok(r) = serde_json::from_str::<Reply>(&line)
            && !r.ok
        {
            into_result(r)?;
        }
        if out.write_all(line.as_bytes()).and_then(|_| out.flush()).is_err() {
            break; // reader went away (e.g. `| head`)
        }
    }
    Ok(0)
}

/// Follows one agent's events until one of `kinds` arrives or `limit` passes.
pub fn wait_for_kinds(ctx: &Ctx, id: &str, kinds: &[&str], limit: Duration) -> Result<Option<EventRecord>> {
    let mut client = ctx.client()?;
    client.send(&Request::Events { after: 0, agent: Some(id.to_string()), follow: true })?;
    let deadline = Instant::now() + limit;
    let stream = client_stream(&client);
    while Instant::now() < deadline {
        let _ = stream
            .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))));
        match client.read_line() {
            Ok(Some(line)) => {
                if let Ok(e) = serde_json::from_str::<EventRecord>(&line) {
                    if kinds.contains(&e.kind.as_str()) {
                        return Ok(Some(e));
                    }
                } else if let Ok(r) = serde_json::from_str::<Reply>(&line) {
                    into_result(r)?;
                }
            }
            Ok(None) => return Ok(None),
            Err(_) => return Ok(None),
        }
    }
    Ok(None)
}

fn client_stream(c: &crate::client::Client) -> std::os::unix::net::UnixStream {
    c.stream().try_clone().expect("socket clone")
}
