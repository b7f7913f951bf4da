//! Killing an agent and waiting until no process of its attempt lives. The supervisor
//! holds its reply to a kill until the attempt's end is recorded, so the reply is the
//! answer; a supervisor that goes away meanwhile (killed, restarted) is asked again, and the
//! new one holds its reply the same way.

use super::{Failure, Target};
use crate::ipc::{AgentView, Request};
use std::time::{Duration, Instant};

/// How long past the grace period a kill may take (the KILL's delivery, a supervisor
/// restart) before it is reported as not done.
pub const SLACK: Duration = Duration::from_secs(10);

/// What a kill ended with: the agent's whole id (the one given may be a prefix or a
/// number) and its state once its group is gone.
pub struct Killed {
    pub agent_id: String,
    pub status: String,
}

/// Kills `id` with `grace` between TERM and KILL; returns once its group is gone.
pub fn kill(t: Target, id: &str, grace: Duration, note: &dyn Fn(&str)) -> Result<Killed, Failure> {
    let deadline = Instant::now() + grace + SLACK;
    let req = Request::Kill { id: id.to_string(), grace_ms: grace.as_millis() as u64 };
    let mut asked = false;
    loop {
        let failure = match t.request(&req) {
            Ok(reply) if reply.ok => {
                let v: serde_json::Value = reply.parse().unwrap_or_default();
                return Ok(Killed {
                    agent_id: v["agentId"].as_str().unwrap_or(id).to_string(),
                    status: v["status"].as_str().unwrap_or("killed").to_string(),
                });
            }
            // Asked again after a restart: an agent that ended meanwhile is what was wanted.
            Ok(reply) if asked => {
                if let Ok(views) = t.call::<Vec<AgentView>>(&Request::Status { ids: vec![id.into()], role: None })
                    && let Some(v) = views.into_iter().next()
                    && v.is_finished()
                {
                    return Ok(Killed { agent_id: v.agent_id, status: v.status });
                }
                Failure::new(reply.exit.unwrap_or(1), reply.error.unwrap_or_default())
            }
            Ok(reply) => {
                return Err(Failure::new(reply.exit.unwrap_or(1), reply.error.unwrap_or_else(|| "refused".into())));
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Failure::new(
                1,
                format!("{id} was not seen to exit within {}: {failure}", humantime::format_duration(grace + SLACK)),
            ));
        }
        note(&format!("{failure}; asking the supervisor again"));
        asked = true;
        std::thread::sleep(Duration::from_millis(200));
    }
}
