//! `corral events [-f]`: the event log as JSON lines; `-f` follows it across supervisor
//! restarts (`ops::follow`).

use super::{Ctx, Result, into_result};
use crate::ipc::{Reply, Request};
use crate::store::EventRecord;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the stream open and print new events as they happen.
    #[arg(short, long)]
    pub follow: bool,
    /// Only this agent's events.
    #[arg(long)]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids))]
    pub agent: Option<String>,
    /// Only events after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Accepted for symmetry with other read commands: the output is always JSON lines.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let agent = a.agent.clone();
    let mut out = std::io::stdout().lock();
    if !a.follow {
        let mut client = ctx.client()?;
        client.send(&Request::Events { after: a.after, agent: a.agent, follow: false })?;
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
            if events.len() < crate::ipc::EVENTS_PAGE {
                return Ok(0);
            }
            client.send(&Request::Events { after, agent: agent.clone(), follow: false })?;
        }
    }
    // Followed across supervisor restarts: resumed after the last event printed.
    let say = |m: &str| {
        let _ = crate::note!("corral events: {m}");
    };
    let mut follower = crate::ops::follow::Follower::new(ctx.target(), a.after, agent, &say);
    loop {
        let Some(e) = follower.next(None).map_err(super::fail)? else { continue };
        let written = serde_json::to_writer(&mut out, &e).map_err(std::io::Error::from).and_then(|_| {
            out.write_all(b"\n")?;
            out.flush()
        });
        if written.is_err() {
            return Ok(0); // reader went away (e.g. `| head`)
        }
    }
}
