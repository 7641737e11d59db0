//! The one reader of a container's inputs (config, policy, state) for every
//! phase and command, and the one writer of the state. One policy for a
//! state that cannot be used: it is reported, treated as no state, and kept
//! aside as `<vmid>.json.corrupt` before anything replaces it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};

use crate::model::policy::Policy;
use crate::model::pveconf::{self, main_section, PveConfig};
use crate::model::state::{LastRun, Outcome, PhaseName, State};
use crate::model::text::{check_size, Limits};
use crate::paths::{Paths, Vmid};
use crate::sys::fs::{read_bytes, read_text, replace_file, Durability};
use crate::sys::lock::flock_exclusive;

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The container config in its text form, read as bytes as Proxmox reads
/// it (any encoding and line length; only its size is checked; see
/// [`pveconf::bytes_to_text`]); a missing config is an error naming it.
pub fn read_conf_text(paths: &Paths, vmid: Vmid) -> Result<String> {
    let path = paths.pve_conf(vmid);
    let bytes = read_bytes(paths, &path, Limits::PVE_CONFIG)?.ok_or_else(|| {
        anyhow!(
            "{}: not found; is {vmid} a container on this node? (pct list)",
            path.display()
        )
    })?;
    check_size(&path.display().to_string(), &bytes, Limits::PVE_CONFIG)?;
    Ok(pveconf::bytes_to_text(&bytes).into_owned())
}

/// The whole container config, snapshots and pending section included.
pub fn read_conf(paths: &Paths, vmid: Vmid) -> Result<PveConfig> {
    Ok(PveConfig::parse(&read_conf_text(paths, vmid)?))
}

/// The config's main section only: for readers that use only its accessors.
pub fn read_conf_main(paths: &Paths, vmid: Vmid) -> Result<PveConfig> {
    Ok(PveConfig::parse(main_section(&read_conf_text(
        paths, vmid,
    )?)))
}

/// The optional policy, parsed strictly, with its text (for line numbers).
pub fn read_policy_with_text(paths: &Paths, vmid: Vmid) -> Result<Option<(String, Policy)>> {
    let path = paths.policy(vmid);
    let Some(text) = read_text(paths, &path, Limits::HOST_FILE)? else {
        return Ok(None);
    };
    let policy = Policy::parse(&path.display().to_string(), &text).map_err(|e| anyhow!(e))?;
    Ok(Some((text, policy)))
}

/// The optional policy, parsed strictly.
pub fn read_policy(paths: &Paths, vmid: Vmid) -> Result<Option<Policy>> {
    Ok(read_policy_with_text(paths, vmid)?.map(|(_, p)| p))
}

/// The state as read: `state` is `None` when there is none or it cannot be
/// used, and then `problem` says why (file named).
#[derive(Debug, Clone, Default)]
pub struct StateRead {
    pub state: Option<State>,
    pub problem: Option<String>,
    /// A state file exists (usable or not).
    pub exists: bool,
}

/// Reads the state with the one policy every phase and command shares.
pub fn load_state(paths: &Paths, vmid: Vmid) -> StateRead {
    let path = paths.state(vmid);
    let text = match read_text(paths, &path, Limits::HOST_FILE) {
        Ok(Some(t)) => t,
        Ok(None) => return StateRead::default(),
        Err(e) => {
            return StateRead {
                state: None,
                problem: Some(format!("{e:#}; ignored, treated as no state")),
                exists: true,
            }
        }
    };
    match State::parse(&text) {
        Ok(s) => StateRead {
            state: Some(s),
            problem: None,
            exists: true,
        },
        Err(p) => StateRead {
            state: None,
            problem: Some(format!("{}: {p}", path.display())),
            exists: true,
        },
    }
}

/// Read-modify-write of the state under the tool's own lock. A state that
/// cannot be used is never silently replaced: it is renamed to
/// `<vmid>.json.corrupt` first, and the returned note says so.
pub fn update_state(
    paths: &Paths,
    vmid: Vmid,
    f: impl FnOnce(&mut State),
) -> Result<Option<String>> {
    let _g = flock_exclusive(paths, &paths.own_lock(vmid), Duration::from_secs(5))
        .map_err(|e| anyhow!("{e}"))?;
    let path = paths.state(vmid);
    let read = load_state(paths, vmid);
    let mut note = None;
    let mut state = match read.state {
        Some(s) => s,
        None if read.exists => {
            let aside = path.with_extension("json.corrupt");
            std::fs::rename(&path, &aside).with_context(|| {
                format!(
                    "{}: cannot move the unusable state aside to {}",
                    path.display(),
                    aside.display()
                )
            })?;
            note = Some(format!(
                "{}; kept as {} and replaced by a new state",
                read.problem.unwrap_or_default(),
                aside.display()
            ));
            State::new(vmid.get())
        }
        None => State::new(vmid.get()),
    };
    f(&mut state);
    crate::sys::fs::create_dir_all(paths, &paths.state_dir())?;
    replace_file(
        paths,
        &path,
        state.render().as_bytes(),
        0o644,
        Durability::Flush,
    )?;
    Ok(note)
}

/// Records how a phase ended in the state's `last_run`.
pub fn record_last_run(
    paths: &Paths,
    vmid: Vmid,
    phase: PhaseName,
    outcome: Outcome,
    message: impl Into<String>,
) -> Result<Option<String>> {
    let last = LastRun {
        phase,
        outcome,
        message: message.into(),
        at: now_secs(),
    };
    update_state(paths, vmid, |s| s.last_run = Some(last))
}

/// The installed pve-container version, as `dpkg-query` reports it for
/// the root (`--root` when it is not `/`); `None` when it is not installed
/// or dpkg-query cannot say (bounded to 5 s).
pub fn pve_container_version(paths: &Paths) -> Option<String> {
    let mut cmd = std::process::Command::new("dpkg-query");
    if !paths.is_real_root() {
        cmd.arg(format!("--root={}", paths.root().display()));
    }
    cmd.args(crate::model::mountmap::DPKG_QUERY_ARGS)
        .arg("pve-container")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    crate::model::mountmap::installed_version(&out)
}
