//! corral: spawn, supervise, retry and aggregate many asynchronous agents.

mod aggregate;
mod cli;
mod client;
mod config;
mod ipc;
mod mcp;
mod memory;
mod monitor;
mod policy;
mod protocol;
#[allow(dead_code)] // used by the schema test and by tools that link it
mod schemas;
mod store;
mod supervisor;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("corral: {}", f.msg);
            f.code
        }
    };
    std::process::exit(code);
}
