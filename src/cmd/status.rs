//! `pct-passthrough status <vmid> [--json]`: reads the container config,
//! policy, state and subid files (reads only) and prints `model::status`'s
//! report, as text or as one JSON object.

use anyhow::Result;

use crate::model::device;
use crate::model::prestart::FileTarget;
use crate::model::status::{self, NextStart, Status, StatusFacts};
use crate::model::text::Limits;
use crate::paths::{Paths, Vmid};
use crate::phase::io;
use crate::phase::next_start::{self, Planned};
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
    let conf = io::read_conf(paths, vmid)?;
    let mut problems = Vec::new();
    let policy = match io::read_policy(paths, vmid) {
        Ok(p) => p,
        Err(e) => {
            problems.push(format!("{e:#}"));
            None
        }
    };
    let state = io::load_state(paths, vmid);
    problems.extend(state.problem.clone());
    let subuid = read_text(paths, &paths.subuid(), Limits::HOST_FILE)?;
    let subgid = read_text(paths, &paths.subgid(), Limits::HOST_FILE)?;
    let devices = device::declared(&conf, policy.as_ref())
        .into_iter()
        .map(|d| {
            let node = devnode::resolve(paths, &d.path)
                .ok()
                .flatten()
                .map(|(n, _)| n);
            (d.source.label(), d.path, node)
        })
        .collect();
    let facts = StatusFacts {
        vmid: vmid.get(),
        conf: &conf,
        enabled: policy.as_ref().is_none_or(|p| p.enabled),
        state: state.state.as_ref(),
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
        subuid: subuid.as_deref(),
        subgid: subgid.as_deref(),
        devices,
        next_start: next_start(paths, vmid),
    };
    Ok(status::build(&facts))
}

/// pre-start's own decision, as `status` shows it.
pub fn next_start(paths: &Paths, vmid: Vmid) -> NextStart {
    let planned = next_start::plan(paths, vmid, &mut next_start::StateNotes::default());
    if let Some(r) = planned.refusal() {
        return NextStart {
            outcome: "refused",
            message: r.what.clone(),
            fix: (!r.fix.is_empty()).then(|| r.fix.clone()),
        };
    }
    let (outcome, message) = match planned {
        Planned::Idle => (
            "nothing",
            "nothing for pct-passthrough to act on".to_string(),
        ),
        Planned::Disabled => ("disabled", "enabled = false in the policy".to_string()),
        Planned::Decided(b) => {
            let mut files: Vec<&str> = Vec::new();
            for c in &b.1.changes {
                if !matches!(c.target, FileTarget::State | FileTarget::StateInterim)
                    && !files.contains(&c.path.as_str())
                {
                    files.push(&c.path);
                }
            }
            if files.is_empty() {
                ("unchanged", String::new())
            } else {
                (
                    "changes",
                    format!(
                        "writes {} (see pct-passthrough plan {vmid})",
                        files.join(", ")
                    ),
                )
            }
        }
        Planned::Refused(_) => unreachable!("handled above"),
    };
    NextStart {
        outcome,
        message,
        fix: None,
    }
}
