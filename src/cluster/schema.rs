//! The cluster's schema, versioned and migrated by corral itself. Every worker and client
//! runs [`migrate`] on connecting: the migrations are applied in one transaction under a
//! transaction-scoped advisory lock, so several workers starting at once apply each step
//! exactly once and the others see the finished schema; a database migrated by a newer
//! corral is refused rather than written with an older idea of its shape.

use tokio_postgres::Client;

/// The advisory lock that serializes migrations (any fixed 64-bit key: "corral" in ASCII).
const LOCK_KEY: i64 = 0x636f_7272_616c;

/// One step of the schema: applied once, in order, recorded in `corral_schema`.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The steps, oldest first. Never edit a released step: add one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "registry, queue, leases, events",
        sql: r#"
CREATE TABLE workspaces (
    id              text PRIMARY KEY,
    max_concurrent  integer,
    breaker         jsonb NOT NULL DEFAULT '{}',
    next_number     bigint NOT NULL DEFAULT 1,
    event_seq       bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE workers (
    id              uuid PRIMARY KEY,
    workspace       text NOT NULL REFERENCES workspaces(id),
    host            text NOT NULL,
    pid             integer NOT NULL,
    labels          jsonb NOT NULL DEFAULT '{}',
    slots           integer NOT NULL,
    state           text NOT NULL CHECK (state IN ('active', 'draining', 'dead')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz NOT NULL
);
CREATE TABLE agents (
    workspace       text NOT NULL REFERENCES workspaces(id),
    id              text NOT NULL,
    seq             bigint NOT NULL,
    role            text NOT NULL,
    state           text NOT NULL,
    owner           uuid REFERENCES workers(id),
    fence           bigint NOT NULL DEFAULT 0,
    run_after       timestamptz NOT NULL DEFAULT now(),
    placement       jsonb NOT NULL DEFAULT '{}',
    preferred       uuid,
    idempotency_key text,
    body            jsonb NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace, id),
    UNIQUE (workspace, seq),
    UNIQUE (workspace, idempotency_key)
);
CREATE INDEX agents_admission ON agents (workspace, seq) WHERE state = 'queued' AND owner IS NULL;
CREATE INDEX agents_owner ON agents (owner) WHERE owner IS NOT NULL;
CREATE TABLE events (
    workspace       text NOT NULL REFERENCES workspaces(id),
    seq             bigint NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    agent_id        text,
    kind            text NOT NULL,
    data            jsonb NOT NULL DEFAULT '{}',
    worker          uuid,
    fence           bigint,
    PRIMARY KEY (workspace, seq)
);
CREATE TABLE commands (
    id              bigserial PRIMARY KEY,
    workspace       text NOT NULL REFERENCES workspaces(id),
    agent_id        text NOT NULL,
    kind            text NOT NULL,
    args            jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz,
    result          jsonb
);
CREATE INDEX commands_pending ON commands (workspace, agent_id) WHERE done_at IS NULL;
CREATE TABLE reports (
    workspace       text NOT NULL,
    agent_id        text NOT NULL,
    fence           bigint NOT NULL,
    body            jsonb NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace, agent_id),
    FOREIGN KEY (workspace, agent_id) REFERENCES agents(workspace, id)
);
CREATE TABLE handoffs (
    workspace       text NOT NULL,
    agent_id        text NOT NULL,
    attempt         integer NOT NULL,
    fence           bigint NOT NULL,
    file            text NOT NULL,
    body            jsonb NOT NULL,
    deliverables_checked boolean NOT NULL DEFAULT false,
    PRIMARY KEY (workspace, agent_id, attempt),
    FOREIGN KEY (workspace, agent_id) REFERENCES agents(workspace, id)
);
CREATE TABLE escalations (
    workspace       text NOT NULL REFERENCES workspaces(id),
    id              bigint NOT NULL,
    agent_id        text,
    body            jsonb NOT NULL,
    resolved_at     timestamptz,
    PRIMARY KEY (workspace, id)
);
CREATE TABLE kv (
    workspace       text NOT NULL REFERENCES workspaces(id),
    key             text NOT NULL,
    value           jsonb NOT NULL,
    PRIMARY KEY (workspace, key)
);
"#,
    },
    Migration {
        version: 2,
        name: "attempts, lost streaks, lease sweeps",
        sql: r#"
ALTER TABLE agents ADD COLUMN IF NOT EXISTS attempt integer NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN IF NOT EXISTS lost_streak integer NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS attempts (
    workspace       text NOT NULL,
    agent_id        text NOT NULL,
    n               integer NOT NULL,
    fence           bigint NOT NULL,
    worker          uuid NOT NULL REFERENCES workers(id),
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at        timestamptz,
    outcome         text,
    exit_code       integer,
    detail          jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (workspace, agent_id, n),
    FOREIGN KEY (workspace, agent_id) REFERENCES agents(workspace, id)
);
CREATE INDEX IF NOT EXISTS workers_lease ON workers (workspace, lease_until);
"#,
    },
    Migration {
        version: 3,
        name: "idempotent spawns, commands taken under a fence",
        sql: r#"
ALTER TABLE agents ADD COLUMN IF NOT EXISTS spawn_request jsonb;
ALTER TABLE commands ADD COLUMN IF NOT EXISTS taken_by uuid;
ALTER TABLE commands ADD COLUMN IF NOT EXISTS taken_fence bigint;
ALTER TABLE commands ADD COLUMN IF NOT EXISTS taken_at timestamptz;
CREATE INDEX IF NOT EXISTS commands_untaken ON commands (workspace, agent_id, id) WHERE taken_at IS NULL;
"#,
    },
    Migration {
        version: 4,
        name: "mirrored events written once",
        sql: r#"
ALTER TABLE agents ADD COLUMN IF NOT EXISTS mirrored jsonb NOT NULL DEFAULT '{}';
"#,
    },
    Migration {
        version: 5,
        name: "escalations opened by workers, with their time",
        sql: r#"
ALTER TABLE escalations ADD COLUMN IF NOT EXISTS opened_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS escalations_open ON escalations (workspace, id) WHERE resolved_at IS NULL;
"#,
    },
    Migration {
        version: 6,
        name: "admission groups, workspace budget, provider holds",
        sql: r#"
ALTER TABLE agents ADD COLUMN IF NOT EXISTS admission_group text;
UPDATE agents SET admission_group = body->'request'->>'group'
    WHERE admission_group IS NULL AND jsonb_typeof(body->'request'->'group') = 'string';
CREATE INDEX IF NOT EXISTS agents_group_owned ON agents (workspace, admission_group) WHERE owner IS NOT NULL;
ALTER TABLE agents ADD COLUMN IF NOT EXISTS provider text;
ALTER TABLE workspaces ADD COLUMN IF NOT EXISTS group_limits jsonb NOT NULL DEFAULT '{}';
ALTER TABLE workspaces ADD COLUMN IF NOT EXISTS max_cost_usd float8;
ALTER TABLE workspaces ADD COLUMN IF NOT EXISTS provider_holds jsonb NOT NULL DEFAULT '{}';
"#,
    },
    Migration {
        version: 7,
        name: "run-time capacity and pauses over the configured limits",
        sql: r#"
ALTER TABLE workspaces ADD COLUMN IF NOT EXISTS capacity jsonb NOT NULL DEFAULT '{}';
"#,
    },
];

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The schema version before (0: a database corral had never used).
    pub from: i32,
    /// The schema version now.
    pub to: i32,
    /// The steps this call applied (empty when another worker got there first).
    pub applied: Vec<i32>,
}

/// The newest schema version this corral knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Brings the database's schema to [`latest`], safely with several callers at once.
pub async fn migrate(client: &mut Client) -> Result<Migrated, String> {
    let db = |what: &str, e: tokio_postgres::Error| format!("schema migration: {what}: {e}");
    let tx = client.transaction().await.map_err(|e| db("cannot begin", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await.map_err(|e| db("cannot take the lock", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS corral_schema (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(|e| db("cannot create corral_schema", e))?;
    let row = tx
        .query_one("SELECT COALESCE(max(version), 0) FROM corral_schema", &[])
        .await
        .map_err(|e| db("cannot read the version", e))?;
    let from: i32 = row.get(0);
    if from > latest() {
        return Err(format!(
            "the database's corral schema is version {from}, newer than this corral knows ({}): \
             upgrade corral on this machine (the database is left as it is)",
            latest()
        ));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        tx.batch_execute(m.sql).await.map_err(|e| db(&format!("step {} ({})", m.version, m.name), e))?;
        tx.execute("INSERT INTO corral_schema (version, name) VALUES ($1, $2)", &[&m.version, &m.name])
            .await
            .map_err(|e| db("cannot record the step", e))?;
        applied.push(m.version);
    }
    tx.commit().await.map_err(|e| db("cannot commit", e))?;
    Ok(Migrated { from, to: latest(), applied })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_one_up_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(!m.sql.trim().is_empty());
        }
    }
}
