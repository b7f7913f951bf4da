//! A fake machine and registry for the supervisor's own tests: a clock that moves when told,
//! shims that start when the test answers for them, run files the test writes in memory,
//! signals recorded instead of sent, and a registry in memory that can be made to fail.

use super::io::{Io, RunProbe};
use super::shim::{ExitRecord, RunInfo, ShimArgs, StartRecord};
use crate::policy::agent::{Agent, Escalation, ProcessEnd};
use crate::policy::lifecycle::{Now, Signal};
use crate::protocol::AgentId;
use crate::store::{EventRecord, Registry, Result, StoreError};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// What a fake run file holds.
#[derive(Clone, Default)]
pub struct FakeRun {
    pub held: bool,
    pub shim_pid: Option<i32>,
    pub start: Option<(i32, i32)>,
    pub exit: Option<ProcessEnd>,
}

#[derive(Default)]
pub struct World {
    pub mono: u64,
    pub started: Vec<ShimArgs>,
    pub signals: Vec<(i32, Signal)>,
    pub watched: Vec<(AgentId, u32, i32)>,
    pub runs: HashMap<PathBuf, FakeRun>,
}

#[derive(Clone, Default)]
pub struct FakeIo(pub Rc<RefCell<World>>);

impl Io for FakeIo {
    fn now(&mut self) -> Now {
        let mono = self.0.borrow().mono;
        Now { wall: format!("2026-01-01T00:00:00.000+00:00#{mono}"), mono, jitter: 0.5 }
    }
    fn mono_ms(&self) -> u64 {
        self.0.borrow().mono
    }
    fn signal_group(&mut self, pgid: i32, signal: Signal) -> std::io::Result<()> {
        self.0.borrow_mut().signals.push((pgid, signal));
        Ok(())
    }
    fn start_shim(&mut self, args: ShimArgs) {
        self.0.borrow_mut().started.push(args);
    }
    fn probe_run(&self, run: &Path) -> RunProbe {
        let w = self.0.borrow();
        let Some(r) = w.runs.get(run) else { return RunProbe { held: None, info: RunInfo::default() } };
        let at = "2026-01-01T00:00:00.000+00:00".to_string();
        RunProbe {
            held: Some(r.held),
            info: RunInfo {
                shim_pid: r.shim_pid.or(r.start.map(|s| s.0)),
                start: r.start.map(|(shim_pid, pid)| StartRecord {
                    shim_pid,
                    pid,
                    started_at: at.clone(),
                    out_fd: None,
                    agent_out_fd: None,
                    start_time: None,
                }),
                exit: r.exit.clone().map(|end| ExitRecord { end, ended_at: at.clone(), stopped: None }),
            },
        }
    }
    fn open_shim(&self, _shim_pid: i32, run: &Path) -> Option<OwnedFd> {
        // Any descriptor stands for the pidfd: the fake's watches never read it.
        let held = self.0.borrow().runs.get(run).is_some_and(|r| r.held);
        held.then(|| std::fs::File::open("/dev/null").ok().map(OwnedFd::from)).flatten()
    }
    fn read_run(&self, run: &Path) -> std::io::Result<RunInfo> {
        Ok(self.probe_run(run).info)
    }
    fn watch_exit(&mut self, id: &AgentId, attempt: u32, shim_pid: i32, _run: &Path, _pidfd: Option<OwnedFd>) {
        self.0.borrow_mut().watched.push((id.clone(), attempt, shim_pid));
    }
}

#[derive(Default)]
pub struct Tables {
    /// Agent rows as stored text, in spawn order.
    pub agents: Vec<(String, String)>,
    pub number: u64,
    pub events: Vec<EventRecord>,
    pub escalations: Vec<Escalation>,
    pub kv: HashMap<String, String>,
    pub memory: Vec<(String, crate::memory::MemoryCandidate)>,
    /// Every commit fails while set (a full disk).
    pub failing: bool,
    pub commits: usize,
}

#[derive(Clone, Default)]
pub struct MemRegistry(pub Rc<RefCell<Tables>>);

impl Registry for MemRegistry {
    fn load(&mut self) -> Result<crate::store::Loaded> {
        let t = self.0.borrow();
        let mut out = crate::store::Loaded::default();
        for (id, body) in &t.agents {
            out.row(id.clone(), String::new(), body);
        }
        Ok(out)
    }
    fn next_number(&mut self) -> Result<u64> {
        let mut t = self.0.borrow_mut();
        t.number += 1;
        Ok(t.number)
    }
    fn raise_number(&mut self, floor: u64) -> Result<()> {
        let mut t = self.0.borrow_mut();
        t.number = t.number.max(floor);
        Ok(())
    }
    fn put(&mut self, agent: &Agent) -> Result<()> {
        let mut t = self.0.borrow_mut();
        if t.failing {
            return Err(full());
        }
        let body = serde_json::to_string(agent).expect("serializes");
        let id = agent.spec.id.to_string();
        match t.agents.iter_mut().find(|(i, _)| *i == id) {
            Some(row) => row.1 = body,
            None => t.agents.push((id, body)),
        }
        Ok(())
    }
    fn append_event(&mut self, at: &str, agent: Option<&AgentId>, kind: &str, data: &Value) -> Result<EventRecord> {
        let mut t = self.0.borrow_mut();
        let rec = EventRecord {
            seq: t.events.len() as u64 + 1,
            at: at.into(),
            agent_id: agent.cloned(),
            kind: kind.into(),
            data: data.clone(),
        };
        t.events.push(rec.clone());
        Ok(rec)
    }
    fn events(&mut self, after: u64, agent: Option<&AgentId>, limit: usize) -> Result<Vec<EventRecord>> {
        let t = self.0.borrow();
        Ok(t.events
            .iter()
            .filter(|e| e.seq > after && agent.is_none_or(|a| e.agent_id.as_ref() == Some(a)))
            .take(limit)
            .cloned()
            .collect())
    }
    fn recent_events(&mut self, agent: &AgentId, limit: usize) -> Result<Vec<EventRecord>> {
        let all = self.events(0, Some(agent), usize::MAX)?;
        Ok(all[all.len().saturating_sub(limit)..].to_vec())
    }
    fn add_escalation(&mut self, e: &Escalation) -> Result<u64> {
        let mut t = self.0.borrow_mut();
        let mut e = e.clone();
        e.n = t.escalations.len() as u64 + 1;
        t.escalations.push(e.clone());
        Ok(e.n)
    }
    fn put_escalation(&mut self, e: &Escalation) -> Result<()> {
        let mut t = self.0.borrow_mut();
        if let Some(x) = t.escalations.iter_mut().find(|x| x.n == e.n) {
            *x = e.clone();
        }
        Ok(())
    }
    fn escalations(&mut self) -> Result<Vec<Escalation>> {
        Ok(self.0.borrow().escalations.clone())
    }
    fn add_memory(&mut self, key: &str, m: &crate::memory::MemoryCandidate) -> Result<bool> {
        let mut t = self.0.borrow_mut();
        if t.memory.iter().any(|(k, _)| k == key) {
            return Ok(false);
        }
        t.memory.push((key.into(), m.clone()));
        Ok(true)
    }
    fn memories(&mut self) -> Result<Vec<crate::memory::MemoryCandidate>> {
        Ok(self.0.borrow().memory.iter().map(|(_, m)| m.clone()).collect())
    }
    fn get_meta(&mut self, key: &str) -> Result<Option<String>> {
        Ok(self.0.borrow().kv.get(key).cloned())
    }
    fn put_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.0.borrow_mut().kv.insert(key.into(), value.into());
        Ok(())
    }
    fn begin(&mut self) -> Result<()> {
        Ok(())
    }
    fn commit(&mut self) -> Result<()> {
        let mut t = self.0.borrow_mut();
        if t.failing {
            return Err(full());
        }
        t.commits += 1;
        Ok(())
    }
}

fn full() -> StoreError {
    StoreError::Db(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
        Some("database or disk is full".into()),
    ))
}
