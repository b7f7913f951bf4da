//! The `corral` binary: the command line, and the hidden entry points of the per-attempt
//! shim and the launcher.

use corral::{cli, supervisor};

fn main() {
    // Before anything is created: corral's files are the user's alone, whatever the umask.
    corral::protocol::perms::private_umask();
    // The per-attempt shim is started once per attempt and is on the spawn latency path:
    // it skips building the whole command-line parser.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "__shim") {
        std::process::exit(supervisor::shim::run_from_stdin());
    }
    if args.get(1).is_some_and(|a| a == "__launcher") {
        std::process::exit(supervisor::launcher::run());
    }
    // A completion request from the shell's registration (`corral completions SHELL`).
    cli::completions::answer_if_asked();
    let cli = cli::Cli::from_env();
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(f) => {
            corral::display::note_block(&format!("corral: {}", f.msg));
            f.code
        }
    };
    std::process::exit(code);
}
