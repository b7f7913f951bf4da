//! `corral completions bash|zsh|fish` and `corral man`: generated from the CLI definition,
//! so they never drift from it.

use super::{Cli, Result};
use clap::CommandFactory;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub shell: clap_complete::Shell,
}

pub fn completions(a: Args) -> Result {
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "corral", &mut std::io::stdout());
    Ok(0)
}

pub fn man() -> Result {
    let cmd = Cli::command();
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
    Ok(0)
}
