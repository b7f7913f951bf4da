//! `corral parallel`, `corral pause`, `corral resume`: how many agents may run at once, and
//! whether queued agents may start at all, changed at run time. The supervisor keeps each
//! change in the registry, over `corral.toml`, until it is changed again or reset; in
//! cluster mode the database keeps it for every worker (`cluster::capacity`, through
//! `cli::cluster`), and the commands print the same.

use super::output::print_json;
use super::{Ctx, Result, usage};
use crate::ipc::{CapacityView, Request};
use crate::say;

#[derive(Debug, clap::Args)]
pub struct ParallelArgs {
    /// How many agents (of the group) may run at once from now on, 1 or more; kept over
    /// `corral.toml` (and across supervisor restarts) until changed or reset.
    #[arg(value_name = "N", required_unless_present = "reset", conflicts_with = "reset")]
    pub n: Option<usize>,
    /// Change this admission group's limit instead of the workspace's `[health] max_concurrent`.
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Forget the change: the limit is `corral.toml`'s again (`[health] max_concurrent`, or
    /// `[groups.G] max_concurrent` with --group).
    #[arg(long)]
    pub reset: bool,
    /// Print the capacity as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// Hold only this admission group's queued agents.
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Print the capacity as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// Release only this admission group (paused with `corral pause --group G`).
    #[arg(long, value_name = "G", conflicts_with = "all")]
    pub group: Option<String>,
    /// Release the workspace and every paused group.
    #[arg(long)]
    pub all: bool,
    /// Print the capacity as JSON.
    #[arg(long)]
    pub json: bool,
}

fn check_group(g: &Option<String>) -> Result<()> {
    if let Some(g) = g {
        crate::protocol::ids::validate_group(g).map_err(|e| usage(format!("--group: {e}")))?;
    }
    Ok(())
}

/// What `corral parallel` asks for, checked.
pub fn parallel_request(a: &ParallelArgs) -> Result<Request> {
    check_group(&a.group)?;
    if a.n == Some(0) {
        return Err(usage(
            "corral parallel 0 would never start anything; use `corral pause` to hold admission (and `corral \
             resume` to release it), or give 1 or more",
        ));
    }
    let max = if a.reset { None } else { a.n };
    Ok(Request::Parallel { group: a.group.clone(), max })
}

/// What `corral pause` asks for, checked.
pub fn pause_request(a: &PauseArgs) -> Result<Request> {
    check_group(&a.group)?;
    Ok(Request::Pause { group: a.group.clone(), paused: true, all: false })
}

/// What `corral resume` asks for, checked.
pub fn resume_request(a: &ResumeArgs) -> Result<Request> {
    check_group(&a.group)?;
    Ok(Request::Pause { group: a.group.clone(), paused: false, all: a.all })
}

pub fn parallel(ctx: &Ctx, a: ParallelArgs) -> Result {
    show(ctx, &parallel_request(&a)?, a.json)
}

pub fn pause(ctx: &Ctx, a: PauseArgs) -> Result {
    show(ctx, &pause_request(&a)?, a.json)
}

pub fn resume(ctx: &Ctx, a: ResumeArgs) -> Result {
    show(ctx, &resume_request(&a)?, a.json)
}

fn show(ctx: &Ctx, req: &Request, json: bool) -> Result {
    print(ctx.call(req)?, json)
}

/// What the three commands print: the capacity they changed (`data`, a [`CapacityView`]),
/// as JSON or as one line.
pub fn print(data: serde_json::Value, json: bool) -> Result {
    if json {
        print_json(&data)?;
        return Ok(0);
    }
    let v: CapacityView = serde_json::from_value(data)?;
    let what = match &v.group {
        Some(g) => format!("group {}", crate::display::shown(g)),
        None => "workspace".to_string(),
    };
    let limit = match (v.max_concurrent, v.changed, v.configured) {
        (None, _, _) => "no limit of its own".to_string(),
        (Some(n), true, Some(c)) => format!("at most {n} at once (corral parallel; corral.toml says {c})"),
        (Some(n), true, None) => format!("at most {n} at once (corral parallel)"),
        (Some(n), false, _) => format!("at most {n} at once (corral.toml)"),
    };
    let paused = match (&v.group, v.paused) {
        (_, false) => String::new(),
        (None, true) => "; paused (corral resume to release)".to_string(),
        (Some(g), true) => format!("; paused (corral resume --group {} to release)", crate::display::shown(g)),
    };
    say!("{what}: {limit}{paused}; {} running, {} queued", v.running, v.queued)?;
    Ok(0)
}
