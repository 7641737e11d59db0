//! One module per hookscript phase. Each reads facts, asks the pure model
//! what to do, and applies it. This module dispatches and owns the
//! exit-code contract: only pre-start blocks a start.

pub mod chain;
pub mod ct_job;
pub mod io;
pub mod mount_hook;
pub mod next_start;
pub mod post_start;
pub mod pre_start;
pub mod shift;
pub mod stop;
pub mod udev;

use std::time::Duration;

use crate::paths::{Paths, Vmid};
use crate::sys::lock::{flock_exclusive, FlockGuard, LockError};
use crate::sys::log::Log;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    PreStart,
    PostStart,
    PreStop,
    PostStop,
}

impl Phase {
    pub fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "pre-start" => Phase::PreStart,
            "post-start" => Phase::PostStart,
            "pre-stop" => Phase::PreStop,
            "post-stop" => Phase::PostStop,
            _ => return None,
        })
    }

    /// Whether a by-hand run takes PVE's config lock. pre-start and
    /// post-start may edit the config and rely on what they read staying
    /// put, as under Proxmox, so by hand they take it. pre-stop only logs
    /// and post-stop only reads the config and writes our own state file
    /// (under our own lock): neither needs it, so by hand they do not wait
    /// 10 s behind a `pct set` or a start and then fail.
    pub fn takes_config_lock(self) -> bool {
        matches!(self, Phase::PreStart | Phase::PostStart)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::PreStart => "pre-start",
            Phase::PostStart => "post-start",
            Phase::PreStop => "pre-stop",
            Phase::PostStop => "post-stop",
        }
    }
}

/// How the tool was invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `<vmid> <phase>`: Proxmox holds the config lock.
    Hook,
    /// `--phase`: we take the config lock ourselves for the phases that
    /// need it ([`Phase::takes_config_lock`]), unless it is a dry run.
    Manual { dry_run: bool },
}

impl Mode {
    pub fn dry_run(self) -> bool {
        matches!(self, Mode::Manual { dry_run: true })
    }
}

/// Everything a phase needs: where the files are, which container, how.
pub struct Ctx<'a> {
    pub paths: &'a Paths,
    pub vmid: Vmid,
    pub mode: Mode,
    pub log: &'a mut Log,
}

/// How long a by-hand run waits for PVE's config lock, as PVE does.
pub const PVE_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Takes PVE's config lock for a by-hand run.
pub fn take_pve_config_lock(paths: &Paths, vmid: Vmid) -> Result<FlockGuard, LockError> {
    flock_exclusive(paths, &paths.pve_config_lock(vmid), PVE_LOCK_TIMEOUT)
}

/// Runs `phase` and returns the process exit code.
pub fn run(ctx: &mut Ctx, phase: Phase) -> u8 {
    let _pve_lock = match ctx.mode {
        Mode::Manual { dry_run: false } if phase.takes_config_lock() => {
            match take_pve_config_lock(ctx.paths, ctx.vmid) {
                Ok(g) => Some(g),
                Err(e) => {
                    ctx.log.error("lock-busy", e.to_string());
                    return 1;
                }
            }
        }
        _ => None,
    };
    let dry_run = ctx.mode.dry_run();
    // pre-start runs a chained hookscript first itself (its failure is a
    // refusal, recorded like any other).
    let result = match phase {
        Phase::PreStart => pre_start::run(ctx),
        Phase::PostStart => post_start::run(ctx),
        Phase::PreStop => stop::pre_stop(ctx),
        Phase::PostStop => stop::post_stop(ctx),
    };
    // In the other phases it runs after our work, and only warns.
    if phase != Phase::PreStart {
        if let Err(e) = chain::run(ctx.paths, ctx.vmid, phase.as_str(), ctx.log, dry_run) {
            let fix = format!(
                "fix it, or remove 'chain' from {}",
                ctx.paths.policy(ctx.vmid).display()
            );
            ctx.log.emit(
                &crate::model::event::Event::warn("chain-failed", format!("{e:#}")).with_fix(fix),
            );
        }
    }
    match result {
        Ok(()) => 0,
        Err(e) => {
            ctx.log.error("failed", format!("{e:#}"));
            match phase {
                // post-stop never fails: PVE only logs it where nobody looks.
                Phase::PostStop => 0,
                _ => 1,
            }
        }
    }
}
