//! The pure pre-start planner: from the facts (config, policy, state, host
//! files, device nodes) to a decision (new file contents, events, or a
//! refusal). No I/O here; `phase::pre_start` gathers and applies.

use crate::model::event::Event;
use crate::model::policy::Policy;
use crate::model::pveconf::PveConfig;
use crate::model::state::State;

/// What pre-start knows before it decides.
#[derive(Debug, Clone)]
pub struct Facts {
    pub vmid: u32,
    /// The config's path, for messages.
    pub conf_path: String,
    pub conf: PveConfig,
    pub policy: Option<Policy>,
    pub state: Option<State>,
}

/// What pre-start should do.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// The new container config text, if it changes.
    pub conf: Option<String>,
    /// Lines for the task log and syslog.
    pub events: Vec<Event>,
    /// Set when starting would be wrong: the message for the task log.
    pub refusal: Option<String>,
}

/// True when the config names something the tool acts on: ID maps, device
/// entries, or bind mounts of device nodes. Without it, and without policy
/// or state, pre-start returns at once.
pub fn config_has_work(conf: &PveConfig) -> bool {
    !conf.idmap_lines().is_empty()
        || !conf.dev_entries().is_empty()
        || conf
            .mount_entries()
            .iter()
            .any(|m| m.source.starts_with("/dev/"))
}

pub fn decide(facts: &Facts) -> Decision {
    let _ = facts;
    Decision::default()
}
