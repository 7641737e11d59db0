//! argv in, exit code out.

use std::process::ExitCode;

use pct_passthrough::{app, cli, paths::Paths};

fn main() -> ExitCode {
    pct_passthrough::sys::fs::normalize_umask();
    let cmd = match cli::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pct-passthrough: {e}");
            return ExitCode::from(2);
        }
    };
    ExitCode::from(app::run(cmd, &Paths::from_env()))
}
