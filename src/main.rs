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
    // The per-attempt shim is started once per attempt and is on the spawn latency path:
    // it skips building the whole command-line parser.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "__shim") {
        std::process::exit(supervisor::shim::run_from_args(&args[2..]));
    }
    if args.get(1).is_some_and(|a| a == "__launcher") {
        std::process::exit(supervisor::launcher::run());
    }
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
