//! `corral worker [--database URL] [--workspace NAME] [--label K=V ...] [--slots N]`: this
//! machine's worker in a cluster (see `cluster::worker`). Runs in the foreground until
//! SIGTERM or SIGINT; its agents keep running across a restart within the lease.

use super::{Ctx, Result, usage};
use crate::cluster::worker::{self, Options};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The PostgreSQL URL (default: CORRAL_DATABASE_URL, else `[cluster] database`).
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// The workspace's name in the database (default: `[cluster] workspace`, else the
    /// workspace directory's name).
    #[arg(long, value_name = "NAME")]
    pub workspace: Option<String>,
    /// What this worker offers, over `[cluster] labels` (repeatable): a role's `placement`
    /// must be contained in them.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// At most this many agents on this worker at once (default `[cluster] slots`, else
    /// `[health] max_concurrent`).
    #[arg(long, value_name = "N")]
    pub slots: Option<usize>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    ctx.need_config()?;
    let (db, workspace) = crate::cluster::target(&ctx.ws, a.database.as_deref(), a.workspace.as_deref())
        .map_err(usage)?
        .ok_or_else(|| {
            usage(
                "corral worker needs a database: give --database postgres://USER@HOST/DB, set CORRAL_DATABASE_URL, or \
                 set `database` under [cluster] in corral.toml",
            )
        })?;
    let cfg = &ctx.ws.config;
    let timings = cfg.cluster.timings().map_err(usage)?;
    let mut labels = cfg.cluster.labels_json();
    for l in &a.labels {
        let (k, v) = crate::config::parse_label(l).map_err(|e| usage(format!("--label {e}")))?;
        labels[k] = v;
    }
    let health = cfg.health();
    let slots = match a.slots.or(cfg.cluster.slots) {
        Some(0) => return Err(usage("--slots 0 can never work: nothing would ever start here; use 1 or more")),
        Some(n) => n,
        None => health.max_concurrent,
    };
    worker::run(Options {
        db,
        workspace,
        timings,
        labels,
        slots,
        max_concurrent: Some(health.max_concurrent),
        groups: cfg.group_limits(),
        max_cost_usd: cfg.budget.max_cost_usd,
        health: health.clone(),
        root: ctx.ws.root.clone(),
        data: ctx.data.clone(),
    })?;
    Ok(0)
}
