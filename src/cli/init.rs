//! `corral init`: writes corral.toml with the seed's role table and creates the data dir.

use super::{Ctx, Fail, Result};
use crate::config::{CONFIG_FILE, DEFAULT_DATA_DIR};
use crate::protocol::DataDir;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Overwrite an existing corral.toml.
    #[arg(long)]
    pub force: bool,
}

pub const TEMPLATE: &str = r#"# corral configuration. Durations take forms like 90s, 15m, 1h30m.

# Where agents' status files, handoffs, logs and the registry live.
# "data" gives exactly the seed's paths (data/agent-status, data/handoffs, ...).
data_dir = "{data_dir}"

# Applies to every role unless the role overrides it.
[defaults]
# argv template used when `corral spawn` has no `-- CMD`. Placeholders:
# {context} {context_file} {task} {agent_id} {role} {handoff_file} {status_file}
# command = ["claude", "-p", "{context}"]
attempt_timeout = "20m"   # one attempt may run this long, then its process group is killed
max_retries = 1           # attempts = retries + 1

# The seed's role table.
[roles.PLANNER]
attempt_timeout = "15m"
max_retries = 1

[roles.IMPLEMENTER]
attempt_timeout = "30m"
max_retries = 2

[roles.AUDITOR]
attempt_timeout = "20m"
max_retries = 1

[roles.CLEANER]
attempt_timeout = "10m"
max_retries = 1
"#;

pub fn run(ctx: &Ctx, data_dir: Option<PathBuf>, a: Args) -> Result {
    let cwd = std::env::current_dir()?;
    let path = cwd.join(CONFIG_FILE);
    if path.exists() && !a.force {
        return Err(Fail { code: 1, msg: format!("{} already exists; pass --force to overwrite it", path.display()) });
    }
    let dd = data_dir.map(|d| d.display().to_string()).unwrap_or_else(|| DEFAULT_DATA_DIR.to_string());
    let text = TEMPLATE.replace("{data_dir}", &dd.replace('\\', "\\\\").replace('"', "\\\""));
    crate::config::parse(&text, &path).map_err(|e| Fail { code: 2, msg: e })?;
    crate::protocol::atomic::write_atomic(&path, text.as_bytes())?;
    let data = if PathBuf::from(&dd).is_absolute() { PathBuf::from(&dd) } else { cwd.join(&dd) };
    DataDir::new(data.clone()).create_all()?;
    let _ = ctx;
    eprintln!("wrote {} and created {}", path.display(), data.display());
    Ok(0)
}
