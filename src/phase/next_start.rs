//! What the next pre-start would do: its read and decide steps, writing
//! nothing. pre-start applies the decision; `plan`, `status`, `doctor` and
//! post-stop report it. Shared by phases and commands, not a phase.

use std::path::PathBuf;

use anyhow::Result;

use super::{chain, io};
use crate::model::device;
use crate::model::policy::Policy;
use crate::model::prestart::{self, Decision, DeviceFact, Facts, HostFile, Refusal};
use crate::model::pveconf::{main_section, PveConfig};
use crate::model::state::State;
use crate::model::text::Limits;
use crate::paths::{Paths, Vmid};
use crate::sys::devnode;
use crate::sys::fs::read_text;

/// What the next pre-start would do, decided without writing anything:
/// what `pre-start`, `plan`, `status`, `doctor` and post-stop all report.
#[derive(Debug)]
pub enum Planned {
    /// Nothing in the config, policy or state to act on: returns at once.
    Idle,
    /// `enabled = false` in the policy.
    Disabled,
    /// The planner's decision (which may be a refusal).
    Decided(Box<(Facts, Decision)>),
    /// An input cannot be read or parsed, or the chained hookscript cannot
    /// run: pre-start refuses the start with this.
    Refused(Refusal),
}

impl Planned {
    /// The refusal, from the inputs or from the planner.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Planned::Refused(r) => Some(r),
            Planned::Decided(b) => b.1.refusal.as_ref(),
            _ => None,
        }
    }
}

/// Reads a host file the plan depends on; unreadable input is an error
/// that names the file.
fn host_file(paths: &Paths, path: PathBuf) -> Result<HostFile> {
    let text = read_text(paths, &path, Limits::HOST_FILE)?;
    Ok(HostFile::new(path.display().to_string(), text))
}

/// Everything pre-start decides from. Reads only.
fn gather(
    paths: &Paths,
    vmid: Vmid,
    conf: PveConfig,
    policy: Option<(String, Policy)>,
    state: Option<State>,
) -> Result<Facts> {
    let policy_path = paths.policy(vmid).display().to_string();
    // dpkg-query costs a process: asked only for per-mount-point maps.
    let pve_container = if policy.as_ref().is_some_and(|(_, p)| !p.mounts.is_empty()) {
        io::pve_container_version(paths)
    } else {
        None
    };
    let (policy_file, policy) = match policy {
        Some((text, p)) => (HostFile::new(policy_path, Some(text)), Some(p)),
        None => (HostFile::new(policy_path, None), None),
    };
    // The mount hook runs as the container's root when it is user-namespaced.
    let unprivileged = conf.userns();
    // Whether the container's root can run this binary costs a walk up its
    // path: asked only when the first-boot step will want it.
    let mount_hook_exe = if crate::model::firstboot::plan(&conf, state.as_ref()).is_some() {
        crate::sys::proc::exe_for_mount_hook(unprivileged)
    } else {
        Err("no group setup before init is needed".into())
    };
    let declared = device::declared(&conf, policy.as_ref());
    let devices = device::declared_paths(&declared)
        .into_iter()
        .map(|path| DeviceFact {
            node: devnode::node(paths, &path).map_err(|e| e.to_string()),
            path,
        })
        .collect();
    Ok(Facts {
        vmid: vmid.get(),
        conf_path: paths.pve_conf(vmid).display().to_string(),
        conf,
        policy,
        policy_file,
        state,
        state_path: paths.cluster_state(vmid).display().to_string(),
        subuid: host_file(paths, paths.subuid())?,
        subgid: host_file(paths, paths.subgid())?,
        // Only matters when there is a map to cover.
        nsswitch: if unprivileged {
            read_text(paths, &paths.nsswitch(), Limits::HOST_FILE)
                .ok()
                .flatten()
        } else {
            None
        },
        lxc_config: host_file(paths, paths.lxc_config(vmid))?,
        mount_hook_exe,
        devices,
        pve_container,
        shift_exe: crate::sys::proc::exe_for_mount_hook(false),
    })
}

/// A read error as the refusal pre-start gives for it.
pub fn input_refusal(e: anyhow::Error) -> Refusal {
    Refusal::new(
        format!("{e:#}"),
        "fix the file named; pre-start refuses every start until then",
    )
}

/// Reads everything and decides, writing nothing: what pre-start would do
/// now. `notes` receives why a state file was ignored, and whether it
/// still needs migrating.
pub fn plan(paths: &Paths, vmid: Vmid, notes: &mut StateNotes) -> Planned {
    let inputs = match Inputs::read(paths, vmid) {
        Ok(i) => i,
        Err(r) => return Planned::Refused(r),
    };
    if let Err(r) = inputs.chain(paths, vmid) {
        return Planned::Refused(r);
    }
    plan_from(paths, vmid, inputs, notes)
}

/// What reading the state found besides the state itself.
#[derive(Debug, Clone, Default)]
pub struct StateNotes {
    /// Why a state file was ignored.
    pub problem: Option<String>,
    /// A state of release 0.1 whose part that follows the container is still
    /// in the node-local file (pre-start moves it).
    pub migrates: bool,
}

/// What pre-start reads first, once: the policy and the config's text.
pub struct Inputs {
    policy: Option<(String, Policy)>,
    conf_text: String,
}

impl Inputs {
    /// The policy first: a policy that does not parse is the first refusal.
    pub fn read(paths: &Paths, vmid: Vmid) -> Result<Inputs, Refusal> {
        let policy = io::read_policy_with_text(paths, vmid).map_err(input_refusal)?;
        let conf_text = io::read_conf_text(paths, vmid).map_err(input_refusal)?;
        Ok(Inputs { policy, conf_text })
    }

    /// The policy's chained hookscript, resolved; a refusal when it cannot
    /// run.
    pub fn chain(&self, paths: &Paths, vmid: Vmid) -> Result<Option<chain::Chain>, Refusal> {
        let Some((_, policy)) = self.policy.as_ref().filter(|(_, p)| p.chain.is_some()) else {
            return Ok(None);
        };
        let main = PveConfig::parse(main_section(&self.conf_text));
        chain::resolve(paths, vmid, policy, main.hookscript()).map_err(|e| {
            Refusal::new(
                format!("{e:#}"),
                "pre-start runs the chained hookscript first and refuses the start while it cannot",
            )
        })
    }
}

/// [`plan`] on inputs already read (and a chain already checked).
pub fn plan_from(paths: &Paths, vmid: Vmid, inputs: Inputs, notes: &mut StateNotes) -> Planned {
    let Inputs { policy, conf_text } = inputs;
    if policy.as_ref().is_some_and(|(_, p)| !p.enabled) {
        return Planned::Disabled;
    }
    // Whether there is anything to do shows in the main section and the
    // state (lines the tool owns must go): a container the tool leaves
    // alone does not get its snapshots parsed, and its state is two failed
    // in-root lookups, read once when it exists.
    let work =
        policy.is_some() || prestart::config_has_work(&PveConfig::parse(main_section(&conf_text)));
    let state = io::load_state(paths, vmid);
    if !work && !state.exists {
        return Planned::Idle;
    }
    notes.problem = state.problem.clone();
    notes.migrates = state.migrates;
    let conf = PveConfig::parse(&conf_text);
    match gather(paths, vmid, conf, policy, state.state) {
        Ok(facts) => {
            let decision = prestart::decide(&facts);
            Planned::Decided(Box::new((facts, decision)))
        }
        Err(e) => Planned::Refused(input_refusal(e)),
    }
}
