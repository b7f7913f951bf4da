//! SQLite in WAL mode. One row per agent (its record as JSON, so the shape can grow without
//! migrations), one row per event. `synchronous = NORMAL`: a commit survives the death of
//! any process, including the supervisor's own `kill -9`; only a power loss can undo the
//! last commits.

use super::{EventRecord, Registry, Result, StoreError};
use crate::policy::agent::{Agent, Escalation};
use crate::protocol::AgentId;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use std::path::Path;

pub struct SqliteRegistry {
    conn: Connection,
    in_tx: bool,
}

impl SqliteRegistry {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
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
        Ok(Self { conn, in_tx: false })
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
    fn load(&mut self) -> Result<Vec<Agent>> {
        self.json_rows("SELECT id, body FROM agents ORDER BY seq")
    }

    fn next_number(&mut self) -> Result<u64> {
        let cur: Option<i64> =
            self.conn.query_row("SELECT value FROM meta WHERE key = 'agent_number'", [], |r| r.get(0)).optional()?;
        let next = cur.unwrap_or(0) + 1;
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES ('agent_number', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![next],
        )?;
        Ok(next as u64)
    }

    fn put(&mut self, agent: &Agent) -> Result<()> {
        let body = serde_json::to_string(agent).expect("agent records always serialize");
        self.conn.execute(
            "INSERT INTO agents(id, seq, role, state, body)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM agents), ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, body = excluded.body",
            params![agent.spec.id.as_str(), agent.spec.role, agent.state.name(), body],
        )?;
        Ok(())
    }

    fn append_event(&mut self, at: &str, agent: Option<&AgentId>, kind: &str, data: &Value) -> Result<EventRecord> {
        self.conn.execute(
            "INSERT INTO events(at, agent_id, kind, data) VALUES (?1, ?2, ?3, ?4)",
            params![at, agent.map(AgentId::as_str), kind, data.to_string()],
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
        self.conn.execute("INSERT INTO escalations(agent_id, body) VALUES (?1, '{}')", params![e.agent_id.as_str()])?;
        let n = self.conn.last_insert_rowid() as u64;
        let mut e = e.clone();
        e.n = n;
        self.put_escalation(&e)?;
        Ok(n)
    }

    fn put_escalation(&mut self, e: &Escalation) -> Result<()> {
        let body = serde_json::to_string(e).expect("escalations always serialize");
        self.conn.execute("UPDATE escalations SET body = ?2 WHERE n = ?1", params![e.n as i64, body])?;
        Ok(())
    }

    fn escalations(&mut self) -> Result<Vec<Escalation>> {
        self.json_rows("SELECT 'escalation ' || n, body FROM escalations ORDER BY n")
    }

    fn add_memory(&mut self, key: &str, m: &crate::memory::MemoryCandidate) -> Result<bool> {
        let body = serde_json::to_string(m).expect("memory candidates always serialize");
        let n = self.conn.execute("INSERT OR IGNORE INTO memory(key, body) VALUES (?1, ?2)", params![key, body])?;
        Ok(n > 0)
    }

    fn memories(&mut self) -> Result<Vec<crate::memory::MemoryCandidate>> {
        self.json_rows("SELECT 'memory ' || seq, body FROM memory ORDER BY seq")
    }

    fn get_meta(&mut self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM kv WHERE key = ?1", params![key], |r| r.get(0)).optional()?)
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
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
        if !self.in_tx {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_tx = true;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        if self.in_tx {
            self.conn.execute_batch("COMMIT")?;
            self.in_tx = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
