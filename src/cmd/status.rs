//! `pct-passthrough status <vmid> [--json]`: reads the container config,
//! policy, state and subid files (reads only) and prints `model::status`'s
//! report, as text or as one JSON object.

use anyhow::{anyhow, Result};

use crate::model::doctor::wanted_devices;
use crate::model::policy::Policy;
use crate::model::pveconf::PveConfig;
use crate::model::state::State;
use crate::model::status::{self, Status, StatusFacts};
use crate::model::text::Limits;
use crate::paths::{Paths, Vmid};
use crate::sys::devnode;
use crate::sys::fs::read_text;

pub fn run(paths: &Paths, vmid: Vmid, json: bool) -> u8 {
    match gather(paths, vmid) {
        Ok(s) if json => match serde_json::to_string_pretty(&s) {
            Ok(text) => {
                println!("{text}");
                0
            }
            Err(e) => {
                eprintln!("pct-passthrough {vmid} status: cannot render JSON: {e}");
                1
            }
        },
        Ok(s) => {
            print!("{}", s.render());
            0
        }
        Err(e) => {
            eprintln!("pct-passthrough {vmid} status: {e:#}");
            1
        }
    }
}

fn gather(paths: &Paths, vmid: Vmid) -> Result<Status> {
    let conf_path = paths.pve_conf(vmid);
    let conf_text = read_text(paths, &conf_path, Limits::PVE_CONFIG)?.ok_or_else(|| {
        anyhow!(
            "{}: not found; is {vmid} a container on this node? (pct list)",
            conf_path.display()
        )
    })?;
    let conf = PveConfig::parse(&conf_text);
    let policy_path = paths.policy(vmid);
    let mut problems = Vec::new();
    let policy = match read_text(paths, &policy_path, Limits::HOST_FILE) {
        Ok(Some(t)) => match Policy::parse(&policy_path.display().to_string(), &t) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(e);
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            problems.push(format!("{e:#}"));
            None
        }
    };
    let state_path = paths.state(vmid);
    let state = match read_text(paths, &state_path, Limits::HOST_FILE) {
        Ok(Some(t)) => match State::parse(&t) {
            Ok(s) => Some(s),
            Err(p) => {
                problems.push(format!("{}: {p}", state_path.display()));
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            problems.push(format!("{e:#}"));
            None
        }
    };
    let subuid = read_text(paths, &paths.subuid(), Limits::HOST_FILE)?;
    let subgid = read_text(paths, &paths.subgid(), Limits::HOST_FILE)?;
    let devices = wanted_devices(&conf, policy.as_ref())
        .into_iter()
        .map(|(source, path, _)| {
            let node = devnode::resolve(paths, &path)
                .ok()
                .flatten()
                .map(|(n, _)| n);
            (source, path, node)
        })
        .collect();
    let facts = StatusFacts {
        vmid: vmid.get(),
        conf: &conf,
        enabled: policy.as_ref().is_none_or(|p| p.enabled),
        state: state.as_ref(),
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
        subuid: subuid.as_deref(),
        subgid: subgid.as_deref(),
        devices,
    };
    Ok(status::build(&facts))
}
