//! The top of the program: a parsed command in, an exit code out. Errors
//! print once, here or in the phase dispatcher.

use crate::cli::{Command, PhaseArg, USAGE};
use crate::paths::Paths;
use crate::phase::{self, Ctx, Mode};
use crate::sys::log::Log;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs a command; returns the exit code.
pub fn run(cmd: Command, paths: &Paths) -> u8 {
    match cmd {
        Command::Help => {
            println!("pct-passthrough {VERSION}: device and ID passthrough for unprivileged Proxmox containers\n\n{USAGE}");
            0
        }
        Command::Version => {
            println!("pct-passthrough {VERSION}");
            0
        }
        Command::Hook { vmid, phase } => {
            let phase = match phase {
                PhaseArg::Known(p) => p,
                PhaseArg::Unknown(name) => {
                    let mut log = Log::new(vmid, &name);
                    log.info(
                        "unknown-phase",
                        format!("unknown phase '{name}'; nothing to do"),
                    );
                    // A chained hookscript may know the phase; it only warns.
                    if let Err(e) = phase::chain::run(paths, vmid, &name, &mut log, false) {
                        log.warn("chain-failed", format!("{e:#}"));
                    }
                    return 0;
                }
            };
            let mut log = Log::new(vmid, phase.as_str());
            let mut ctx = Ctx {
                paths,
                vmid,
                mode: Mode::Hook,
                log: &mut log,
            };
            phase::run(&mut ctx, phase)
        }
        Command::Manual {
            vmid,
            phase,
            dry_run,
        } => {
            let mut log = Log::new(vmid, phase.as_str());
            let mut ctx = Ctx {
                paths,
                vmid,
                mode: Mode::Manual { dry_run },
                log: &mut log,
            };
            phase::run(&mut ctx, phase)
        }
        Command::Doctor { vmid } => crate::cmd::doctor::run(paths, vmid),
        Command::Plan { vmid } => crate::cmd::plan::run(paths, vmid),
        Command::Status { vmid, json } => crate::cmd::status::run(paths, vmid, json),
        Command::Udev { action, devnode } => phase::udev::run(paths, &action, &devnode),
        Command::LxcMountHook { args } => crate::phase::mount_hook::run(&args),
        Command::LxcShiftHook { args } => crate::phase::shift::run_hook(paths, &args),
    }
}
