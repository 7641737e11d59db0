//! argv in, exit code out.
//!
//! `no_main`: a hookscript runs on every container start, so this binary
//! skips the Rust runtime's start-up (the main thread's stack guard read
//! from /proc/self/maps, the stack-overflow handler's alternate stack) and
//! does what a hook needs of it itself (`sys::start`): fds 0 to 2 open,
//! SIGPIPE ignored, the umask set.
// Under `cargo test` the harness brings its own `main`.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
use pct_passthrough::{app, cli, paths::Paths};

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    pct_passthrough::sys::start::process();
    let code = match cli::parse(std::env::args_os().skip(1)) {
        Ok(c) => app::run(c, &Paths::from_env()),
        Err(e) => {
            eprintln!("pct-passthrough: {e}");
            2
        }
    };
    code.into()
}
