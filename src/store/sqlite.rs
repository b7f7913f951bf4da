//! SQLite in WAL mode. One row per agent (its record as JSON, so the shape can grow without
//! migrations), one row per event. `synchronous = NORMAL`: a commit survives the death of
//! any process, including the supervisor's own `kill -9`; only a power loss can undo the
//! last commits.

use super::{EventRecord, Registry, Result, StoreError};
use crate::policy::agent::{Agent, Escalation};
use crate::protocol::AgentId;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use std::path::Path;

/// One write: its statement and arguments, kept until its transaction commits.
type Write = (&'static str, Vec<SqlValue>);

pub struct SqliteRegistry {
    conn: Connection,
    in_tx: bool,
    /// The writes of the open transaction.
    journal: Vec<Write>,
    /// The writes of a transaction whose commit failed (a full disk), done again first
    /// thing in the next one: a failed commit loses nothing and reuses no sequence number.
    replay: Vec<Write>,
}

impl SqliteRegistry {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoint at 2 MiB of log (not 4) and cut it back to that size: a small or
        // nearly full disk is not filled by the write-ahead log itself.
        conn.pragma_update(None, "wal_autocheckpoint", 512)?;
        conn.pragma_update(None, "journal_size_limit", 2 * 1024 * 1024)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS agents (
                 id TEXT PRIMARY KEY, seq INTEGER NOT NULL, role TEXT NOT NULL,
                 state TEXT NOT NULL, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, agent_id TEXT,
                 kind TEXT NOT NULL, data TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS events_agent ON events(agent_id, seq);
             CREATE INDEX IF NOT EXISTS agents_seq ON agents(seq);
             CREATE TABLE IF NOT EXISTS escalations (
                 n INTEGER PRIMARY KEY AUTOINCREMENT, agent_id TEXT NOT NULL, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS memory (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, body TEXT NOT NULL);",
        )?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Self { conn, in_tx: false, journal: Vec::new(), replay: Vec::new() })
    }

    /// Runs one write inside the transaction (opening one if needed) and journals it.
    fn write(&mut self, sql: &'static str, args: Vec<SqlValue>) -> Result<usize> {
        if !self.in_tx
            && let Err(e) = self.begin()
        {
            // Still no room: this write waits its turn behind the others.
            self.replay.push((sql, args));
            return Err(e);
        }
        match self.conn.prepare_cached(sql).and_then(|mut s| s.execute(rusqlite::params_from_iter(args.iter()))) {
            Ok(n) => {
                self.journal.push((sql, args));
                Ok(n)
            }
            Err(e) => {
                if self.conn.is_autocommit() {
                    // SQLite rolled the transaction back itself (a full disk): keep it all.
                    self.journal.push((sql, args));
                    self.abandon();
                }
                Err(e.into())
            }
        }
    }

    /// Ends a transaction that cannot commit, keeping its writes for the next one.
    fn abandon(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.in_tx = false;
        let mut kept = std::mem::take(&mut self.journal);
        kept.append(&mut self.replay);
        self.replay = kept;
    }

    /// Rows of (label, JSON body) decoded as T; a body that does not decode names its row.
    fn json_rows<T: serde::de::DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row?;
            out.push(serde_json::from_str(&body).map_err(|e| StoreError::Corrupt { id, err: e.to_string() })?);
        }
        Ok(out)
    }
}

impl Registry for SqliteRegistry {
    fn load(&mut self) -> Result<super::Loaded> {
        let mut out = super::Loaded::default();
        let mut stmt = self.conn.prepare("SELECT id, role, body FROM agents ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            // A column of the wrong type is one more unreadable row, not an unreadable registry.
            let text = |i: usize| match r.get_ref(i) {
                Ok(rusqlite::types::ValueRef::Text(t)) => Ok(String::from_utf8_lossy(t).into_owned()),
                Ok(other) => Err(format!("column {i} holds {:?}, not text", other.data_type())),
                Err(e) => Err(e.to_string()),
            };
            let id = text(0).unwrap_or_else(|e| format!("(unreadable id: {e})"));
            let role = text(1).unwrap_or_default();
            match text(2) {
                Ok(body) => out.row(id, role, &body),
                Err(reason) => out.unreadable.push(super::Unreadable { id, role, reason }),
            }
        }
        Ok(out)
    }

    fn raise_number(&mut self, floor: u64) -> Result<()> {
        self.write(
            "INSERT INTO meta(key, value) VALUES ('agent_number', ?1)
             ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
            vec![SqlValue::Integer(floor as i64)],
        )?;
        Ok(())
    }

    fn next_number(&mut self) -> Result<u64> {
        let cur: Option<i64> =
            self.conn.query_row("SELECT value FROM meta WHERE key = 'agent_number'", [], |r| r.get(0)).optional()?;
        let next = cur.unwrap_or(0) + 1;
        self.write(
            "INSERT INTO meta(key, value) VALUES ('agent_number', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            vec![SqlValue::Integer(next)],
        )?;
        Ok(next as u64)
    }

    fn put(&mut self, agent: &Agent) -> Result<()> {
        let body = serde_json::to_string(agent).expect("agent records always serialize");
        self.write(
            "INSERT INTO agents(id, seq, role, state, body)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM agents), ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, body = excluded.body",
            vec![
                SqlValue::Text(agent.spec.id.to_string()),
                SqlValue::Text(agent.spec.role.clone()),
                SqlValue::Text(agent.state.name().to_string()),
                SqlValue::Text(body),
            ],
        )?;
        Ok(())
    }

    fn append_event(&mut self, at: &str, agent: Option<&AgentId>, kind: &str, data: &Value) -> Result<EventRecord> {
        self.write(
            "INSERT INTO events(at, agent_id, kind, data) VALUES (?1, ?2, ?3, ?4)",
            vec![
                SqlValue::Text(at.to_string()),
                agent.map_or(SqlValue::Null, |a| SqlValue::Text(a.to_string())),
                SqlValue::Text(kind.to_string()),
                SqlValue::Text(data.to_string()),
            ],
        )?;
        Ok(EventRecord {
            seq: self.conn.last_insert_rowid() as u64,
            at: at.to_string(),
            agent_id: agent.cloned(),
            kind: kind.to_string(),
            data: data.clone(),
        })
    }

    fn events(&mut self, after: u64, agent: Option<&AgentId>, limit: usize) -> Result<Vec<EventRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, at, agent_id, kind, data FROM events
             WHERE seq > ?1 AND (?2 IS NULL OR agent_id = ?2) ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![after as i64, agent.map(AgentId::as_str), limit as i64], |r| {
            let id: Option<String> = r.get(2)?;
            let data: String = r.get(4)?;
            Ok(EventRecord {
                seq: r.get::<_, i64>(0)? as u64,
                at: r.get(1)?,
                agent_id: id.and_then(|s| AgentId::parse(&s).ok()),
                kind: r.get(3)?,
                data: serde_json::from_str(&data).unwrap_or(Value::Null),
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn add_escalation(&mut self, e: &Escalation) -> Result<u64> {
        self.write(
            "INSERT INTO escalations(agent_id, body) VALUES (?1, '{}')",
            vec![SqlValue::Text(e.agent_id.to_string())],
        )?;
        let n = self.conn.last_insert_rowid() as u64;
        let mut e = e.clone();
        e.n = n;
        self.put_escalation(&e)?;
        Ok(n)
    }

    fn put_escalation(&mut self, e: &Escalation) -> Result<()> {
        let body = serde_json::to_string(e).expect("escalations always serialize");
        self.write(
            "UPDATE escalations SET body = ?2 WHERE n = ?1",
            vec![SqlValue::Integer(e.n as i64), SqlValue::Text(body)],
        )?;
        Ok(())
    }

    fn escalations(&mut self) -> Result<Vec<Escalation>> {
        self.json_rows("SELECT 'escalation ' || n, body FROM escalations ORDER BY n")
    }

    fn add_memory(&mut self, key: &str, m: &crate::memory::MemoryCandidate) -> Result<bool> {
        let body = serde_json::to_string(m).expect("memory candidates always serialize");
        let n = self.write(
            "INSERT OR IGNORE INTO memory(key, body) VALUES (?1, ?2)",
            vec![SqlValue::Text(key.to_string()), SqlValue::Text(body)],
        )?;
        Ok(n > 0)
    }

    fn memories(&mut self) -> Result<Vec<crate::memory::MemoryCandidate>> {
        self.json_rows("SELECT 'memory ' || seq, body FROM memory ORDER BY seq")
    }

    fn get_meta(&mut self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM kv WHERE key = ?1", params![key], |r| r.get(0)).optional()?)
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.write(
            "INSERT INTO kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            vec![SqlValue::Text(key.to_string()), SqlValue::Text(value.to_string())],
        )?;
        Ok(())
    }

    fn recent_events(&mut self, agent: &AgentId, limit: usize) -> Result<Vec<EventRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq FROM events WHERE agent_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2")?;
        let from: Option<i64> =
            stmt.query_row(params![agent.as_str(), limit.saturating_sub(1) as i64], |r| r.get(0)).optional()?;
        drop(stmt);
        self.events(from.map_or(0, |s| s as u64 - 1), Some(agent), limit)
    }

    fn begin(&mut self) -> Result<()> {
        if self.in_tx {
            return Ok(());
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.in_tx = true;
        let mut pending = std::mem::take(&mut self.replay).into_iter();
        while let Some((sql, args)) = pending.next() {
            let done =
                self.conn.prepare_cached(sql).and_then(|mut s| s.execute(rusqlite::params_from_iter(args.iter())));
            self.journal.push((sql, args));
            if let Err(e) = done {
                self.replay = pending.collect();
                self.abandon();
                return Err(e.into());
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        if self.in_tx {
            if let Err(e) = self.conn.execute_batch("COMMIT") {
                self.abandon();
                return Err(e.into());
            }
            self.in_tx = false;
            self.journal.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_the_disk_cannot_take_is_done_again_once_it_can() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SqliteRegistry::open(&d.path().join("r.db")).unwrap();
        let big = serde_json::json!("x".repeat(64 * 1024));
        s.begin().unwrap();
        s.append_event("t", None, "before", &big).unwrap();
        s.commit().unwrap();
        // A full disk, as SQLite sees it: no page beyond those the file has now.
        let pages: i64 = s.conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        s.conn.pragma_update(None, "max_page_count", pages).unwrap();
        let mut failed = false;
        s.begin().unwrap();
        for i in 0..20 {
            failed |= s.append_event("t", None, &format!("during {i}"), &big).is_err();
        }
        failed |= s.commit().is_err();
        assert!(failed, "the writes should not have fit");
        // Still full: trying again fails again and loses nothing.
        assert!(s.begin().and_then(|()| s.commit()).is_err());
        // Space again: everything is there once, in order.
        s.conn.pragma_update(None, "max_page_count", 1_000_000).unwrap();
        s.begin().unwrap();
        s.append_event("t", None, "after", &serde_json::json!(1)).unwrap();
        s.commit().unwrap();
        let kinds: Vec<String> = s.events(0, None, 100).unwrap().into_iter().map(|e| e.kind).collect();
        let mut want = vec!["before".to_string()];
        want.extend((0..20).map(|i| format!("during {i}")));
        want.push("after".into());
        assert_eq!(kinds, want);
        let seqs: Vec<u64> = s.events(0, None, 100).unwrap().into_iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=22).collect::<Vec<u64>>());
    }

    #[test]
    fn one_unreadable_row_is_set_apart_and_the_number_never_goes_back() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SqliteRegistry::open(&d.path().join("r.db")).unwrap();
        s.conn
            .execute_batch(
                "INSERT INTO agents(id, seq, role, state, body) VALUES ('agent-004-X', 1, 'X', 'running', '{bad');
                 INSERT INTO agents(id, seq, role, state, body) VALUES ('agent-005-X', 2, 'X', 'running', X'FF');",
            )
            .unwrap();
        let loaded = s.load().unwrap();
        assert!(loaded.agents.is_empty());
        let rows: Vec<(&str, &str)> = loaded.unreadable.iter().map(|u| (u.id.as_str(), u.role.as_str())).collect();
        assert_eq!(rows, [("agent-004-X", "X"), ("agent-005-X", "X")]);
        assert!(loaded.unreadable[1].reason.contains("not text"), "{:?}", loaded.unreadable[1]);
        s.begin().unwrap();
        s.raise_number(9).unwrap();
        s.raise_number(3).unwrap();
        s.commit().unwrap();
        assert_eq!(s.next_number().unwrap(), 10);
    }

    #[test]
    fn numbers_events_and_recent_events_are_the_newest_in_order() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SqliteRegistry::open(&d.path().join("r.db")).unwrap();
        assert_eq!((s.next_number().unwrap(), s.next_number().unwrap()), (1, 2));
        let a = AgentId::parse("a").unwrap();
        let b = AgentId::parse("b").unwrap();
        s.begin().unwrap();
        for i in 0..100 {
            let who = if i % 2 == 0 { &a } else { &b };
            s.append_event("t", Some(who), "k", &serde_json::json!(i)).unwrap();
        }
        s.commit().unwrap();
        let r = s.recent_events(&a, 10).unwrap();
        let got: Vec<i64> = r.iter().map(|e| e.data.as_i64().unwrap()).collect();
        assert_eq!(got, (80..100).step_by(2).collect::<Vec<_>>());
        assert_eq!(s.recent_events(&a, 500).unwrap().len(), 50);
        assert_eq!(s.events(0, None, 1000).unwrap().len(), 100);
    }
}
