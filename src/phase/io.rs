//! The one reader of a container's inputs (config, policy, state) for every
//! phase and command, and the one writer of the state. The state is two
//! files: what follows the container across a cluster on `/etc/pve`, the
//! rest node-local (`model::state`). One policy for a state file that
//! cannot be used: it is reported, treated as no state, and kept aside as
//! `<name>.corrupt` before anything replaces it.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};

use crate::model::policy::Policy;
use crate::model::pveconf::{self, main_section, PveConfig};
use crate::model::state::{LastRun, Outcome, PhaseName, State, LEGACY_VERSION};
use crate::model::text::{check_size, Limits};
use crate::paths::{Paths, Vmid};
use crate::sys::fs::{is_read_only, read_bytes, read_text, replace_file_making_dir, Durability};
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

/// The state as read (both files joined): `state` is `None` when there is
/// none or it cannot be used, and then `problem` says why (file named).
#[derive(Debug, Clone, Default)]
pub struct StateRead {
    pub state: Option<State>,
    pub problem: Option<String>,
    /// A state file exists (usable or not).
    pub exists: bool,
    /// The node file is version 1 and there is no cluster file yet: the
    /// next write moves what follows the container to `/etc/pve`.
    pub migrates: bool,
}

/// One state file as read.
enum StateFile {
    Absent,
    Usable(String, Box<State>),
    /// Parsed but unusable (corrupt, unknown version): set aside on write.
    Unusable(String),
    /// Not readable as a file (a FIFO, a directory, an I/O error): never
    /// replaced, a write fails naming it.
    Unreadable(String),
}

impl StateFile {
    fn read(paths: &Paths, path: &Path) -> StateFile {
        match read_text(paths, path, Limits::HOST_FILE) {
            Ok(None) => StateFile::Absent,
            Ok(Some(t)) => match State::parse(&t) {
                Ok(s) => StateFile::Usable(t, Box::new(s)),
                Err(p) => StateFile::Unusable(format!("{}: {p}", path.display())),
            },
            Err(e) => StateFile::Unreadable(format!("{e:#}; ignored, treated as no state")),
        }
    }

    fn state(&self) -> Option<State> {
        match self {
            StateFile::Usable(_, s) => Some((**s).clone()),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            StateFile::Usable(t, _) => Some(t),
            _ => None,
        }
    }

    fn problem(&self) -> Option<&str> {
        match self {
            StateFile::Unusable(p) | StateFile::Unreadable(p) => Some(p),
            _ => None,
        }
    }
}

/// True when either state file exists.
pub fn state_exists(paths: &Paths, vmid: Vmid) -> bool {
    // In-root lookups (O_PATH opens), not `Path::exists`.
    let present = |p: &std::path::Path| {
        crate::sys::fs::open_host(
            paths,
            p,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .is_ok_and(|f| f.is_some())
    };
    present(&paths.cluster_state(vmid)) || present(&paths.state(vmid))
}

/// Reads the state with the one policy every phase and command shares:
/// what follows the container from `/etc/pve/pct-passthrough/`, the rest
/// from `/var/lib/pct-passthrough/` (see [`State::join`]).
pub fn load_state(paths: &Paths, vmid: Vmid) -> StateRead {
    let cluster = StateFile::read(paths, &paths.cluster_state(vmid));
    let node = StateFile::read(paths, &paths.state(vmid));
    joined(vmid, &cluster, &node)
}

fn joined(vmid: Vmid, cluster: &StateFile, node: &StateFile) -> StateRead {
    let problems: Vec<&str> = [cluster.problem(), node.problem()]
        .into_iter()
        .flatten()
        .collect();
    let exists = !matches!((cluster, node), (StateFile::Absent, StateFile::Absent));
    let (c, n) = (cluster.state(), node.state());
    let migrates = matches!(cluster, StateFile::Absent)
        && n.as_ref()
            .is_some_and(|s| s.version == LEGACY_VERSION && s.has_cluster_part());
    let state = (c.is_some() || n.is_some()).then(|| State::join(vmid.get(), c, n));
    StateRead {
        state,
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
        exists,
        migrates,
    }
}

/// Why the cluster file system cannot take writes now (read-only mount, or
/// `.members` says this node has no quorum); `None` when it can.
pub fn cluster_read_only(paths: &Paths) -> Option<String> {
    let dir = paths.pve_dir();
    match is_read_only(&dir) {
        Ok(true) => {
            return Some(format!(
                "{} is read-only (no cluster quorum?)",
                dir.display()
            ))
        }
        Ok(false) => {}
        Err(e) => return Some(format!("{e:#}")),
    }
    let members = paths.members();
    let text = read_text(paths, &members, Limits::HOST_FILE).ok()??;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    (value["cluster"]["quorate"].as_u64() == Some(0)).then(|| {
        format!(
            "this node has no cluster quorum ({}: quorate 0), so /etc/pve is read-only",
            members.display()
        )
    })
}

/// Moves an unusable state file aside (`<name>.corrupt`), saying so.
fn set_aside(path: &Path, problem: &str) -> Result<String> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    let aside = std::path::PathBuf::from(aside);
    std::fs::rename(path, &aside).with_context(|| {
        format!(
            "{}: cannot move the unusable state aside to {}",
            path.display(),
            aside.display()
        )
    })?;
    Ok(format!(
        "{problem}; kept as {} and replaced by a new state",
        aside.display()
    ))
}

/// Writes the cluster file the way pmxcfs allows: mode 0600, no flock, no
/// fsync (it has neither), at most 1 MiB.
fn write_cluster_state(paths: &Paths, vmid: Vmid, text: &str) -> Result<()> {
    let path = paths.cluster_state(vmid);
    check_size(
        &path.display().to_string(),
        text.as_bytes(),
        Limits::PVE_CONFIG,
    )?;
    if let Some(why) = cluster_read_only(paths) {
        return Err(anyhow!("{}: cannot write: {why}", path.display()));
    }
    replace_file_making_dir(paths, &path, text.as_bytes(), 0o600, Durability::Volatile)
}

/// Read-modify-write of the state under the tool's own (node-local) lock.
/// What follows the container goes to the cluster file, written only when
/// it changes, first; the rest to the node file. A state that cannot be
/// used is never silently replaced: it is renamed to `<name>.corrupt`
/// first, and the returned note says so. When the cluster file must change
/// and cannot be written (no quorum), nothing is written and the error says
/// why, except before the first cluster write (a new or version-1 state):
/// then the whole state stays in the node file until `/etc/pve` takes it.
pub fn update_state(
    paths: &Paths,
    vmid: Vmid,
    f: impl FnOnce(&mut State),
) -> Result<Option<String>> {
    let _g = flock_exclusive(paths, &paths.own_lock(vmid), Duration::from_secs(5))
        .map_err(|e| anyhow!("{e}"))?;
    let (cluster_path, node_path) = (paths.cluster_state(vmid), paths.state(vmid));
    let mut cluster = StateFile::read(paths, &cluster_path);
    let mut node = StateFile::read(paths, &node_path);
    let mut notes = Vec::new();
    for (file, path) in [(&mut cluster, &cluster_path), (&mut node, &node_path)] {
        match file {
            StateFile::Unusable(p) => {
                notes.push(set_aside(path, p)?);
                *file = StateFile::Absent;
            }
            StateFile::Unreadable(p) => return Err(anyhow!("{p}; nothing written")),
            _ => {}
        }
    }
    let mut state = joined(vmid, &cluster, &node)
        .state
        .unwrap_or_else(|| State::new(vmid.get()));
    f(&mut state);
    let (new_cluster, mut node_text) = (state.render_cluster(), state.render_node());
    let cluster_changes = match cluster.text() {
        Some(old) => old != new_cluster,
        None => state.has_cluster_part(),
    };
    // The node file is reports every post-start writes again (verdicts,
    // changes, the last run): a crash may cost it, never a start. Only
    // while it holds the whole state is it flushed.
    let mut durability = Durability::Volatile;
    if cluster_changes {
        if let Err(e) = write_cluster_state(paths, vmid, &new_cluster) {
            if cluster.text().is_some() || cluster_read_only(paths).is_none() {
                return Err(e.context("recording what the tool owns; nothing written"));
            }
            notes.push(format!(
                "{e:#}; the whole state stays in {} until /etc/pve can be written",
                node_path.display()
            ));
            node_text = state.render();
            durability = Durability::Flush;
        }
    }
    replace_file_making_dir(paths, &node_path, node_text.as_bytes(), 0o644, durability)?;
    Ok((!notes.is_empty()).then(|| notes.join("; ")))
}

/// Moves what follows the container out of a version-1 node file onto
/// `/etc/pve` (the first run of this release that reads it); the note says
/// what happened, `None` when there was nothing to move.
pub fn migrate_state(paths: &Paths, vmid: Vmid) -> Result<Option<String>> {
    if !load_state(paths, vmid).migrates {
        return Ok(None);
    }
    if let Some(why) = cluster_read_only(paths) {
        return Ok(Some(format!(
            "{} stays where it is until /etc/pve can be written: {why}",
            paths.state(vmid).display()
        )));
    }
    let note = update_state(paths, vmid, |_| {})?;
    let moved = format!(
        "state of release 0.1 migrated: what follows the container is now in {}",
        paths.cluster_state(vmid).display()
    );
    Ok(Some(match note {
        Some(n) => format!("{moved}; {n}"),
        None => moved,
    }))
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
