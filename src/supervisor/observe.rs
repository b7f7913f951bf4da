//! Turning what agents wrote into inputs for the core: status writes, handoffs, and the
//! facts about an attempt's end (exit record, last report, handoff, output tail).

use super::daemon::{Supervisor, finding_text};
use super::launch;
use crate::aggregate::workspace;
use crate::policy::agent::{AttemptRun, ProcessEnd};
use crate::policy::evidence;
use crate::policy::lifecycle::{self, ExitFacts, HandoffFacts, Report, Rules};
use crate::protocol::files::ReportedStatus;
use crate::protocol::files::{self, FileStamp, StatusFile};
use crate::protocol::{AgentId, DataDir, fsio, time};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// How much of the log's end classification rules see.
const OUTPUT_TAIL_BYTES: u64 = 4096;

/// The content that counts as a change for the stall check: everything but the timestamp.
fn same_content(a: &StatusFile, b: &StatusFile) -> bool {
    a.status == b.status
        && a.progress == b.progress
        && a.phase == b.phase
        && a.milestone == b.milestone
        && a.findings == b.findings
}

/// Findings a status file has seen: those it holds and those dropped to bound it.
fn seen_findings(s: &StatusFile) -> usize {
    usize::try_from(s.findings_dropped.unwrap_or(0)).unwrap_or(usize::MAX).saturating_add(s.findings.len())
}

/// The entry's own time: a symlink planted as a handoff is never followed, even to a time.
fn modified(p: &Path) -> Option<std::time::SystemTime> {
    fsio::lstat(p).and_then(|m| m.modified().ok())
}

impl Supervisor {
    pub fn file_written(&mut self, path: PathBuf) {
        // A watched directory that was replaced and is watched again: what was written in
        // it meanwhile is looked at anew.
        if path == self.data.status_dir() {
            for id in self.order.clone() {
                self.refresh_status(&id);
            }
            return;
        }
        if path == self.data.handoff_dir() {
            for name in self.handoff_names() {
                self.file_written(path.join(name));
            }
            return;
        }
        if path == self.data.run_dir() {
            for id in self.order.clone() {
                if let Some(n) = self.agents[&id].agent.current().map(|a| a.attempt) {
                    self.stream_written(&id, n);
                }
            }
            return;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { return };
        if path.parent() == Some(self.data.run_dir().as_path()) {
            // `<id>.<attempt>.obs`: what an adapter agent's watcher made of its stream.
            if let Some((id, n)) = name.strip_suffix(".obs").and_then(|s| s.rsplit_once('.'))
                && let (Ok(id), Ok(n)) = (AgentId::parse(id), n.parse::<u32>())
                && self.agents.contains_key(&id)
            {
                self.stream_written(&id, n);
            }
        } else if path.parent() == Some(self.data.status_dir().as_path()) {
            if let Some(id) = name.strip_suffix(".json").and_then(|s| AgentId::parse(s).ok())
                && self.agents.contains_key(&id)
            {
                self.refresh_status(&id);
            }
        } else if let Some(owner) = DataDir::handoff_owner(&name).and_then(|s| AgentId::parse(s).ok())
            && let Some(live) = self.agents.get_mut(&owner)
            && !live.handoffs.contains(&path)
        {
            live.handoffs.push(path.clone());
            self.emit(Some(&owner), "handoff", serde_json::json!({ "file": path }));
        }
    }

    /// Takes in an adapter agent's observations of its running attempt `n` as they are
    /// written: progress, and the usage, cost and turns so far. The file is a fixed slot
    /// and one folded line, so this reads only what there is to know now.
    pub fn stream_written(&mut self, id: &AgentId, n: u32) {
        let Some(live) = self.agents.get(id) else { return };
        let a = &live.agent;
        if a.spec.adapter.is_none()
            || !a.state.has_live_process()
            || a.current().is_none_or(|c| c.attempt != n || c.ended().is_some())
        {
            return;
        }
        let info = super::stream::StreamInfo::read(&self.data.attempt_file(id, n, "run"));
        let live = self.agents.get_mut(id).expect("present");
        if let Some(mono) = info.progress {
            lifecycle::progress_seen(&mut live.agent, mono);
        }
        if let Some(s) = info.summary
            && lifecycle::stream_seen(&mut live.agent, n, &s)
        {
            self.mark_dirty(id);
        }
    }

    /// Re-reads an agent's status file; a bad file is recorded against that agent alone.
    /// A new version of the file that differs from the one there before the current
    /// attempt started is a report to the core.
    pub fn refresh_status(&mut self, id: &AgentId) {
        let path = self.data.status_file(id);
        let Some(stamp) = FileStamp::of(&path) else { return };
        let parsed = files::read_status(self.data.root(), &path).and_then(|s| {
            if s.agent_id == id.as_str() {
                Ok(s)
            } else {
                Err(format!("{}: agentId {:?} does not match the file name", path.display(), s.agent_id))
            }
        });
        let rules = (self.rules.clone(), self.default_rules.clone());
        let now = self.now();
        let Some(live) = self.agents.get_mut(id) else { return };
        let new_version = live.status_seen != Some(stamp);
        live.status_seen = Some(stamp);
        let fresh = new_version
            && live.agent.current().is_some_and(|a| a.ended().is_none() && a.status_baseline != Some(stamp));
        let mut actions = Vec::new();
        let event = match parsed {
            Ok(s) => {
                let changed = !live.report.as_ref().is_some_and(|r| same_content(r, &s));
                let any_change = live.report.as_ref() != Some(&s);
                live.report_error = None;
                if fresh {
                    let dropped = s.findings_dropped.unwrap_or(0);
                    let own = live
                        .agent
                        .current()
                        .map(|a| evidence::attempt_findings(a, &s.findings, dropped))
                        .unwrap_or(&[]);
                    let report = Report { status: s.status, last_finding: own.last().map(finding_text), changed };
                    let r = Rules { user: &rules.0, defaults: &rules.1 };
                    actions = lifecycle::status_reported(&mut live.agent, &report, &r, &now);
                }
                let ev = any_change.then(|| {
                    serde_json::json!({
                        "status": s.status, "progress": s.progress, "phase": s.phase,
                        "milestone": s.milestone, "finding": s.findings.last(),
                    })
                });
                live.report = Some(s);
                ev.map(|e| ("status", e))
            }
            Err(e) => {
                let changed = live.report_error.as_ref() != Some(&e);
                live.report_error = Some(e.clone());
                changed.then(|| ("status_unreadable", serde_json::json!({ "reason": e })))
            }
        };
        if let Some((kind, data)) = event {
            self.emit(Some(id), kind, data);
        }
        // A plain report only moves heartbeat times, which are in memory and set again from
        // the status file after a restart: no registry write for it.
        if fresh && !actions.is_empty() {
            self.apply(id, actions);
        }
    }

    /// What the agent's status file and log hold as its current attempt starts: what it
    /// adds after this is that attempt's evidence.
    pub fn take_evidence_baseline(&mut self, id: &AgentId) {
        let log_len = std::fs::symlink_metadata(self.data.log_file(id)).map(|m| m.len()).unwrap_or(0);
        let path = self.data.status_file(id);
        let Some(live) = self.agents.get_mut(id) else { return };
        let findings = match FileStamp::of(&path) {
            None => 0,
            // The version already read needs no second read on the spawn path.
            Some(stamp) if live.status_seen == Some(stamp) => live.report.as_ref().map_or(0, seen_findings),
            Some(_) => files::read_status(self.data.root(), &path).map(|s| seen_findings(&s)).unwrap_or(0),
        };
        if let Some(a) = live.agent.current_mut() {
            a.findings_before = Some(findings);
            a.log_start = Some(log_len);
        }
    }

    pub fn scan_handoffs(&mut self) {
        let dir = self.data.handoff_dir();
        for name in self.handoff_names() {
            let Some(owner) = name.to_str().and_then(DataDir::handoff_owner).and_then(|s| AgentId::parse(s).ok())
            else {
                continue;
            };
            let path = dir.join(&name);
            if let Some(live) = self.agents.get_mut(&owner)
                && !live.handoffs.contains(&path)
            {
                live.handoffs.push(path);
            }
        }
    }

    /// The names in `handoffs/`, listed without following a symlink put in its place.
    fn handoff_names(&self) -> Vec<std::ffi::OsString> {
        fsio::Dir::open(self.data.root(), &self.data.handoff_dir()).and_then(|d| d.names()).unwrap_or_default()
    }

    /// An attempt's shim is gone: gather the facts and let the core decide.
    pub fn attempt_ended(&mut self, id: &AgentId, attempt: u32) {
        self.end_attempt(id, attempt, None, false);
    }

    /// The agent's `worktree_setup` failed: a permanent failure, with its output.
    pub fn setup_failed(&mut self, id: &AgentId, attempt: u32, reason: String) {
        let ended_at = time::rfc3339(time::now());
        self.end_attempt(id, attempt, Some((ProcessEnd::NotStarted { reason }, Some(ended_at))), true);
    }

    /// An attempt the supervisor could not start: it ends as not started, with the reason.
    pub fn attempt_not_started(&mut self, id: &AgentId, attempt: u32, reason: String) {
        let ended_at = time::rfc3339(time::now());
        self.end_attempt(id, attempt, Some((ProcessEnd::NotStarted { reason }, Some(ended_at))), false);
    }

    /// `known`: how it ended, when the supervisor knows; otherwise the shim's record says.
    fn end_attempt(
        &mut self,
        id: &AgentId,
        attempt: u32,
        known: Option<(ProcessEnd, Option<String>)>,
        permanent: bool,
    ) {
        let Some(live) = self.agents.get(id) else { return };
        if live.agent.attempts.iter().any(|a| a.attempt == attempt && a.ended().is_some()) {
            super::prepare::forget(self, id, attempt);
            return;
        }
        let known = known.map(|(end, at)| Ok((end, at, None)));
        let (end, ended_at, stopped) = match known.unwrap_or_else(|| launch::read_exit(self, id, attempt)) {
            Ok(ended) => ended,
            Err(e) => {
                // Calling it lost would be a lie: the record may well be there.
                crate::elog!(
                    "corral daemon: cannot read the exit record of {id} attempt {attempt} yet ({e}); retrying"
                );
                let (tx, id) = (self.tx.clone(), id.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    let _ = tx.send(super::daemon::Msg::Exited { id, attempt, shim_pid: 0 });
                });
                return;
            }
        };
        self.orphans.ended(id, attempt);
        // The last write may not have reached us through inotify yet.
        self.refresh_status(id);
        let verify = match self.wants_verify(id, attempt, &end) {
            false => None,
            true => match super::prepare::verify_outcome(self, id, attempt) {
                Some(r) => Some(r),
                // Decided when the verify answers.
                None => return,
            },
        };
        let Some(handoff) = self.handoff_facts(id, attempt) else {
            // Decided when the branch check answers.
            return;
        };
        super::prepare::forget(self, id, attempt);
        let output_tail = self.output_tail(id, attempt);
        let run = self.data.attempt_file(id, attempt, "run");
        let stream = if self.agents[id].agent.spec.adapter.is_none() {
            None
        } else {
            Some(super::stream::StreamInfo::read(&run).summary.unwrap_or_default())
        };
        let limit_wait_ms = stream.as_ref().and_then(|s| s.rate_limited.as_ref()?.until_ms).map(|until| {
            let now_ms = jiff::Timestamp::now().as_millisecond();
            u64::try_from(until.saturating_sub(now_ms)).unwrap_or(0)
        });
        let rules = (self.rules.clone(), self.default_rules.clone());
        let now = self.now();
        let live = self.agents.get_mut(id).expect("present");
        // Only what this attempt reported speaks for it.
        let this =
            live.agent.attempts.iter().find(|a| a.attempt == attempt).filter(|a| a.liveness.last_report.is_some());
        let report = live.report.as_ref().zip(this);
        let facts = ExitFacts {
            end,
            reported: report.map(|(r, _)| r.status),
            last_finding: report
                .and_then(|(r, a)| evidence::attempt_findings(a, &r.findings, r.findings_dropped.unwrap_or(0)).last())
                .map(finding_text),
            handoff,
            output_tail,
            ended_at,
            timed_out: stopped == Some(super::shim::StopReason::Timeout),
            verify: verify.clone(),
            permanent,
            stream,
            limit_wait_ms,
            after_result: stopped == Some(super::shim::StopReason::ResultGrace),
        };
        let r = Rules { user: &rules.0, defaults: &rules.1 };
        let actions = lifecycle::exited(&mut live.agent, attempt, facts, &r, &now);
        // Written before the events go out: who learns of the end finds it in the log.
        self.log_outcome(id, attempt);
        self.apply(id, actions);
        if self.agents[id].agent.state == crate::policy::agent::AgentState::Complete {
            if verify.as_ref().is_some_and(|v| v.is_ok()) {
                self.add_test_evidence(id, attempt);
            }
            self.remember(id, attempt);
        }
        self.cleanup_after_commit(self.data.attempt_file(id, attempt, "run"));
        self.cleanup_after_commit(self.data.attempt_file(id, attempt, "obs"));
        super::requests::attempt_over(self, id, attempt);
        self.admit_queued();
    }

    /// The log's last word on an attempt: how corral judged it and what follows, below
    /// the shim's footer (which knows only how the process ended).
    fn log_outcome(&self, id: &AgentId, attempt: u32) {
        let Some(a) = self.agents[id].agent.attempts.iter().find(|a| a.attempt == attempt) else { return };
        let AttemptRun::Ended { failure_type, reason, action, .. } = &a.run else { return };
        let judged = match (failure_type, reason) {
            (None, _) => "complete".to_string(),
            (Some(t), Some(r)) => format!("{t}: {r}"),
            (Some(t), None) => t.clone(),
        };
        let then = action.as_deref().filter(|x| *x != "none").map(|x| format!("; then: {x}")).unwrap_or_default();
        let mut line = crate::display::escape(&format!("corral: attempt {attempt} judged {judged}{then}")).into_owned();
        line.push('\n');
        let path = self.data.log_file(id);
        match fsio::open_write(self.data.root(), &path, fsio::Mode::Append) {
            Ok(mut f) => {
                let _ = std::io::Write::write_all(&mut f, line.as_bytes());
            }
            Err(e) => crate::elog!("corral daemon: cannot note the outcome in {}: {e}", path.display()),
        }
    }

    /// The newest handoff file written during this attempt: the file named for it, or one
    /// of the agent's that was not there before it started.
    /// The attempt ended in a way that counts as complete only once the role's `verify`
    /// passes: exit 0, not reporting failed or blocked, not stopped by corral.
    fn wants_verify(&self, id: &AgentId, attempt: u32, end: &ProcessEnd) -> bool {
        let live = &self.agents[id];
        let reported = live
            .report
            .as_ref()
            .filter(|_| live.agent.attempts.iter().any(|a| a.attempt == attempt && a.liveness.last_report.is_some()))
            .map(|r| r.status);
        live.agent.spec.policy.verify.is_some()
            && end.success()
            && live.agent.state == crate::policy::agent::AgentState::Running
            && !matches!(reported, Some(ReportedStatus::Failed | ReportedStatus::Blocked))
    }

    /// A passed verify is test evidence for the attempt's handoff: each structured finding
    /// gets it, and the handoff says what passed (one is written if the agent left none).
    fn add_test_evidence(&mut self, id: &AgentId, attempt: u32) {
        let log = self.data.log_file(id).display().to_string();
        let record = serde_json::json!({ "kind": "test", "ref": log, "passed": true });
        let command = self.agents[id].agent.spec.policy.verify.clone().unwrap_or_default();
        let (path, mut h) = match self.attempt_handoff(id, attempt) {
            Some(p) => match files::read_handoff(self.data.root(), &p) {
                Ok(h) => (p, h),
                Err(_) => return,
            },
            None => {
                let Some(a) = self.agents[id].agent.attempts.iter().find(|a| a.attempt == attempt) else { return };
                let h: files::Handoff = match serde_json::from_value(serde_json::json!({ "fromAgent": id.as_str() })) {
                    Ok(h) => h,
                    Err(_) => return,
                };
                (a.handoff_file.clone(), h)
            }
        };
        for f in h.deliverables.findings.iter_mut() {
            if let Some(o) = f.as_object_mut() {
                match o.get_mut("evidence") {
                    Some(serde_json::Value::Array(v)) => v.push(record.clone()),
                    Some(other) => *other = serde_json::Value::Array(vec![other.take(), record.clone()]),
                    None => {
                        o.insert("evidence".into(), serde_json::Value::Array(vec![record.clone()]));
                    }
                }
            }
        }
        h.deliverables.findings.push(serde_json::json!({
            "claim": format!("verify passed: {}", command.join(" ")),
            "evidence": [record],
        }));
        if let Err(e) = crate::protocol::atomic::write_json_atomic(self.data.root(), &path, &h) {
            crate::elog!("corral daemon: cannot add test evidence to {}: {e}", path.display());
        }
    }

    fn attempt_handoff(&self, id: &AgentId, attempt: u32) -> Option<PathBuf> {
        let live = &self.agents[id];
        let a = live.agent.attempts.iter().find(|a| a.attempt == attempt)?;
        let mut candidates: Vec<PathBuf> = live
            .handoffs
            .iter()
            .filter(|p| evidence::handoff_is_attempts(a, p.file_name().and_then(|n| n.to_str()).unwrap_or_default()))
            .cloned()
            .collect();
        if !candidates.contains(&a.handoff_file) {
            candidates.push(a.handoff_file.clone());
        }
        candidates.into_iter().filter_map(|p| modified(&p).map(|m| (m, p))).max_by_key(|(m, _)| *m).map(|(_, p)| p)
    }

    /// Stores the memory candidates of a completed attempt's handoff, deduplicated.
    fn remember(&mut self, id: &AgentId, attempt: u32) {
        let Some(path) = self.attempt_handoff(id, attempt) else { return };
        let Ok(h) = files::read_handoff(self.data.root(), &path) else { return };
        let Some(mc) = h.memory_candidate else { return };
        let role = self.agents[id].agent.spec.role.clone();
        for value in crate::memory::split_candidates(&mc) {
            let key = crate::memory::canonical(&value);
            let m = crate::memory::MemoryCandidate {
                agent_id: id.to_string(),
                role: role.clone(),
                value,
                first_seen: time::rfc3339(time::now()),
            };
            match self.store.add_memory(&key, &m) {
                Ok(true) => self.emit(Some(id), "memory_stored", serde_json::json!({ "memory": m.value })),
                Ok(false) => {}
                Err(e) => crate::elog!("corral daemon: cannot store memory of {id}: {e}"),
            }
        }
    }

    /// The newest handoff written during this attempt, and whether its files exist inside
    /// the workspace, or for a worktree agent in its branch (by the one rule `aggregate`
    /// uses too; for a worktree agent one `git ls-tree` of the listed paths, run off the
    /// loop: `None` until it has answered).
    fn handoff_facts(&mut self, id: &AgentId, attempt: u32) -> Option<HandoffFacts> {
        let Some(path) = self.attempt_handoff(id, attempt) else { return Some(HandoffFacts::Absent) };
        let cwd = self.agents[id].agent.spec.cwd.clone();
        Some(match files::read_handoff(self.data.root(), &path) {
            Err(e) => HandoffFacts::Unreadable(e),
            Ok(h) => {
                let agent = &self.agents[id].agent;
                let in_worktree = agent.spec.worktree.is_some() && agent.base_commit.is_some();
                let listed = &h.deliverables.files;
                let failing: Vec<String> = match in_worktree {
                    // A worktree agent's deliverables are what its branch holds.
                    true if !listed.is_empty() => super::prepare::branch_check(self, id, attempt, &cwd, listed)?,
                    _ => {
                        let workspace = &self.ws.root;
                        let disk = workspace::OnDisk::new(workspace);
                        listed
                            .iter()
                            .filter_map(|f| workspace::judge(workspace, &cwd, f, &|p| disk.locate(p)).failure(f))
                            .collect()
                    }
                };
                if failing.is_empty() { HandoffFacts::Valid } else { HandoffFacts::MissingFiles(failing) }
            }
        })
    }

    /// What the classification rules see of the attempt's output: the end of what it
    /// printed itself, never an earlier attempt's lines.
    fn output_tail(&self, id: &AgentId, attempt: u32) -> String {
        let Some(a) = self.agents.get(id).and_then(|l| l.agent.attempts.iter().find(|a| a.attempt == attempt)) else {
            return String::new();
        };
        let Ok(mut f) = fsio::open_read(self.data.root(), &self.data.log_file(id)) else { return String::new() };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let (start, size) = evidence::output_window(a, len, OUTPUT_TAIL_BYTES);
        let _ = f.seek(SeekFrom::Start(start));
        let mut buf = Vec::new();
        let _ = f.take(size).read_to_end(&mut buf);
        // corral's own header and footer lines hold the command line and the exit; the
        // rules are about what the agent said.
        String::from_utf8_lossy(&buf)
            .lines()
            .filter(|l| !l.starts_with("=== corral: ") && !l.starts_with("corral: attempt ended"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
