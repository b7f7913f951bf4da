//! The cluster's capacity changed at run time: what `corral parallel`, `corral pause` and
//! `corral resume` set from any machine. The change is kept in the workspace's row
//! (`capacity`, the single-machine supervisor's [`Capacity`]) apart from the limits the
//! workers write from their `corral.toml` when they start (`max_concurrent`,
//! `group_limits`), so a worker starting never undoes it and `--reset` finds the configured
//! value again. Every claim reads both ([`Limits`]), under the workspace row's lock, so the
//! change holds on every worker from its next claim; the change appends the supervisor's
//! events (`capacity_changed`, `paused`, `resumed`), whose notification wakes the workers,
//! so a raised limit or a resume admits at once.

use super::queue::{ClusterError, Ev, append_events};
use crate::ipc::CapacityView;
use crate::policy::admission::Capacity;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tokio_postgres::Client;

type Result<T> = std::result::Result<T, ClusterError>;

/// The limits admission holds to across the cluster: the configured ones with the run-time
/// change over them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// `[health] max_concurrent` as the workers set it (`None`: not set, no limit).
    pub configured: Option<i64>,
    /// `[groups.NAME] max_concurrent` as the workers set them.
    pub configured_groups: BTreeMap<String, i64>,
    /// What `corral parallel`, `pause` and `resume` changed.
    pub capacity: Capacity,
}

impl Limits {
    /// From the workspace row's `max_concurrent`, `group_limits` and `capacity`.
    pub fn of(max: Option<i32>, groups: &Value, capacity: &Value) -> Self {
        let configured_groups = groups
            .as_object()
            .map(|o| o.iter().filter_map(|(g, n)| Some((g.clone(), n.as_i64()?))).collect())
            .unwrap_or_default();
        Self {
            configured: max.map(i64::from),
            configured_groups,
            capacity: serde_json::from_value(capacity.clone()).unwrap_or_default(),
        }
    }

    /// With `local`'s limits for what no worker has set yet (no worker has started in the
    /// workspace): the `corral.toml` the first worker will most likely bring, which is what
    /// `health` and the capacity commands show meanwhile. Claims never use these.
    pub fn or_local(mut self, local: &Local) -> Self {
        if self.configured.is_none() {
            self.configured = Some(n(local.max_concurrent));
            if self.configured_groups.is_empty() {
                self.configured_groups = local.groups.iter().map(|(g, m)| (g.clone(), n(*m))).collect();
            }
        }
        self
    }

    /// The workspace's limit in force (`None`: no limit).
    pub fn max_concurrent(&self) -> Option<i64> {
        self.capacity.max_concurrent.map(n).or(self.configured)
    }

    /// Each limited group's limit in force.
    pub fn groups(&self) -> BTreeMap<String, i64> {
        let mut all = self.configured_groups.clone();
        all.extend(self.capacity.groups.iter().map(|(g, m)| (g.clone(), n(*m))));
        all
    }

    /// [`Limits::groups`] as the JSON object the claim's query reads.
    pub fn groups_json(&self) -> Value {
        serde_json::to_value(self.groups()).unwrap_or_else(|_| json!({}))
    }

    /// The limit in force of `group` (of the workspace when `None`), and the configured one.
    fn limit(&self, group: Option<&str>) -> (Option<i64>, Option<i64>) {
        match group {
            None => (self.max_concurrent(), self.configured),
            Some(g) => (self.groups().get(g).copied(), self.configured_groups.get(g).copied()),
        }
    }

    /// The groups paused on their own.
    pub fn paused_groups(&self) -> Vec<String> {
        self.capacity.paused_groups.iter().cloned().collect()
    }
}

fn n(m: usize) -> i64 {
    i64::try_from(m).unwrap_or(i64::MAX)
}

fn u(m: i64) -> usize {
    usize::try_from(m).unwrap_or(0)
}

/// This machine's `corral.toml` limits, for [`Limits::or_local`].
#[derive(Debug, Clone, Default)]
pub struct Local {
    pub max_concurrent: usize,
    pub groups: BTreeMap<String, usize>,
}

/// One run-time change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `corral parallel N [--group G]`; `max: None` is `--reset`.
    Parallel { group: Option<String>, max: Option<usize> },
    /// `corral pause [--group G]` (`paused`), `corral resume [--group G | --all]`.
    Pause { group: Option<String>, paused: bool, all: bool },
}

impl Change {
    /// The group whose capacity the change is about (`None`: the workspace's).
    pub fn group(&self) -> Option<&str> {
        match self {
            Self::Parallel { group, .. } | Self::Pause { group, .. } => group.as_deref(),
        }
    }
}

/// The workspace row's limits, its lock held until `tx` ends.
async fn read_limits(tx: &tokio_postgres::Transaction<'_>, workspace: &str) -> Result<Limits> {
    let row = tx
        .query_one(
            "SELECT max_concurrent, group_limits, capacity FROM workspaces WHERE id = $1 FOR UPDATE",
            &[&workspace],
        )
        .await?;
    Ok(Limits::of(row.get(0), &row.get(1), &row.get(2)))
}

/// Makes `change` in `workspace` (created if it is not there) in one transaction under the
/// workspace row's lock, with its events (which wake every worker) when it changed
/// anything; returns the capacity it is about as it is right after, `local` standing for
/// what no worker has set yet.
pub async fn change(client: &mut Client, workspace: &str, change: &Change, local: &Local) -> Result<CapacityView> {
    if let Change::Parallel { max: Some(0), .. } = change {
        return Err(ClusterError::Bad(
            "a capacity of 0 would never start anything; use `corral pause` to hold admission (and `corral resume` \
             to release it), or give 1 or more"
                .into(),
        ));
    }
    client.execute("INSERT INTO workspaces (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", &[&workspace]).await?;
    let tx = client.transaction().await?;
    let before = read_limits(&tx, workspace).await?;
    let mut capacity = before.capacity.clone();
    let mut events: Vec<(&str, Value)> = Vec::new();
    match change {
        Change::Parallel { group, max } => {
            let shown = before.clone().or_local(local);
            let (from, configured) = shown.limit(group.as_deref());
            capacity.set_limit(group.as_deref(), *max);
            if let Some(data) = Capacity::limit_event(group.as_deref(), *max, from.map(u), configured.map(u)) {
                events.push(("capacity_changed", data));
            }
        }
        Change::Pause { group, paused, all } => {
            for g in capacity.set_paused(group.as_deref(), *paused, *all) {
                events.push((if *paused { "paused" } else { "resumed" }, json!({ "group": g })));
            }
        }
    }
    if capacity != before.capacity {
        let v = serde_json::to_value(&capacity).unwrap_or_else(|_| json!({}));
        tx.execute("UPDATE workspaces SET capacity = $2 WHERE id = $1", &[&workspace, &v]).await?;
    }
    let evs: Vec<Ev> = events.into_iter().map(|(kind, data)| Ev { agent: None, fence: None, kind, data }).collect();
    // Numbered last, with the notification every worker's listener wakes on.
    append_events(&tx, workspace, None, &evs).await?;
    tx.commit().await?;
    view(client, workspace, change.group(), local).await
}

/// The capacity of `workspace` (of one group with `group`) as it is now: the limit in force,
/// the configured one, whether it was changed or paused, and its agents that hold a slot on
/// some worker and those waiting in the queue.
pub async fn view(client: &Client, workspace: &str, group: Option<&str>, local: &Local) -> Result<CapacityView> {
    let row = client
        .query_opt("SELECT max_concurrent, group_limits, capacity FROM workspaces WHERE id = $1", &[&workspace])
        .await?;
    let limits = match &row {
        Some(r) => Limits::of(r.get(0), &r.get(1), &r.get(2)),
        None => Limits::default(),
    }
    .or_local(local);
    let counts = client
        .query_one(
            "SELECT count(*) FILTER (WHERE owner IS NOT NULL),
                    count(*) FILTER (WHERE state = 'queued' AND owner IS NULL)
             FROM agents WHERE workspace = $1 AND ($2::text IS NULL OR admission_group = $2)",
            &[&workspace, &group],
        )
        .await?;
    let (running, queued): (i64, i64) = (counts.get(0), counts.get(1));
    let (max, configured) = limits.limit(group);
    let c = &limits.capacity;
    Ok(CapacityView {
        group: group.map(str::to_string),
        max_concurrent: max.map(u),
        configured: configured.map(u),
        changed: match group {
            None => c.max_concurrent.is_some(),
            Some(g) => c.groups.contains_key(g),
        },
        paused: match group {
            None => c.paused,
            Some(g) => c.paused_groups.contains(g),
        },
        running: u(running),
        queued: u(queued),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_holds_over_the_configured_limits_and_a_reset_finds_them_again() {
        let mut l = Limits::of(Some(5), &json!({ "build": 2, "bad": "x" }), &json!({}));
        assert_eq!((l.max_concurrent(), l.groups()), (Some(5), [("build".to_string(), 2)].into()));
        l.capacity.set_limit(None, Some(1));
        l.capacity.set_limit(Some("build"), Some(4));
        l.capacity.set_limit(Some("lint"), Some(1));
        assert_eq!(l.max_concurrent(), Some(1));
        assert_eq!(l.groups_json(), json!({ "build": 4, "lint": 1 }));
        assert_eq!(l.limit(Some("build")), (Some(4), Some(2)));
        l.capacity.set_limit(None, None);
        l.capacity.set_limit(Some("build"), None);
        assert_eq!((l.max_concurrent(), l.limit(Some("build"))), (Some(5), (Some(2), Some(2))));
        // What the supervisor keeps is what the row holds.
        let kept = serde_json::to_value(&l.capacity).unwrap();
        assert_eq!(kept, json!({ "groups": { "lint": 1 } }));
        assert_eq!(Limits::of(Some(5), &json!({}), &kept).capacity, l.capacity);
    }

    #[test]
    fn this_machines_limits_stand_in_only_for_what_no_worker_set() {
        let local = Local { max_concurrent: 3, groups: [("g".to_string(), 1)].into() };
        let unset = Limits::of(None, &json!({}), &json!({ "paused": true })).or_local(&local);
        assert_eq!((unset.max_concurrent(), unset.limit(Some("g"))), (Some(3), (Some(1), Some(1))));
        assert!(unset.capacity.paused);
        let set = Limits::of(Some(7), &json!({}), &json!({})).or_local(&local);
        assert_eq!((set.max_concurrent(), set.limit(Some("g"))), (Some(7), (None, None)));
    }
}
