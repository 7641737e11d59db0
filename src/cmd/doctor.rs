//! `pct-passthrough doctor [<vmid>]`: gathers host and container facts
//! (reads only), asks `model::doctor` for verdicts, prints one line per
//! check with its fix. Exit 1 if any check fails.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::model::device;
use crate::model::doctor::{self, Check, ClusterFacts, DeviceFacts, HookFile};
use crate::model::idmap::{IdKind, IdRange};
use crate::model::policy::Policy;
use crate::model::prestart::devices;
use crate::model::pveconf::PveConfig;
use crate::model::storage;
use crate::model::subid::nsswitch_has_subid;
use crate::model::text::Limits;
use crate::paths::{Paths, Vmid};
use crate::phase::io;
use crate::phase::next_start::{self, Planned};
use crate::sys::devnode;
use crate::sys::fs::read_text;

/// Runs every check and prints the report; returns the exit code.
pub fn run(paths: &Paths, vmid: Option<Vmid>) -> u8 {
    let mut checks = host_checks(paths);
    let subuid = read_text(paths, &paths.subuid(), Limits::HOST_FILE)
        .ok()
        .flatten()
        .unwrap_or_default();
    let subgid = read_text(paths, &paths.subgid(), Limits::HOST_FILE)
        .ok()
        .flatten()
        .unwrap_or_default();
    let used = used_host_ranges(paths);
    checks.extend(doctor::root_ranges("/etc/subuid", &subuid, &used[0]));
    checks.extend(doctor::root_ranges("/etc/subgid", &subgid, &used[1]));
    let vmids = match vmid {
        Some(v) => vec![v],
        None => containers_using_us(paths),
    };
    for v in vmids {
        checks.extend(container_checks(paths, v, &subuid, &subgid));
    }
    let (out, code) = doctor::render(&checks);
    print!("{out}");
    code
}

/// Reads a host file for a check: an unreadable file becomes a fail line.
fn read(paths: &Paths, abs: &str, limits: Limits, subject: &str) -> Result<Option<String>, Check> {
    read_text(paths, &paths.host(abs), limits).map_err(|e| {
        Check::fail(
            subject,
            format!("{e:#}"),
            format!("make {abs} a readable text file"),
        )
    })
}

fn executable(paths: &Paths, abs: &str) -> bool {
    fs::metadata(paths.host(abs)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn host_checks(paths: &Paths) -> Vec<Check> {
    let mut out = vec![doctor::shadow_tools(
        executable(paths, "/usr/bin/newuidmap"),
        executable(paths, "/usr/bin/newgidmap"),
    )];
    for abs in ["/etc/subuid", "/etc/subgid"] {
        match read(paths, abs, Limits::HOST_FILE, "host") {
            Ok(text) => {
                let unparsed = text
                    .as_deref()
                    .map(doctor::unparsed_subid_lines)
                    .unwrap_or_default();
                out.extend(doctor::subid_shape(abs, text.as_deref(), &unparsed));
            }
            Err(c) => out.push(c),
        }
    }
    match read(paths, "/etc/nsswitch.conf", Limits::HOST_FILE, "host") {
        Ok(text) => {
            let has = text.as_deref().is_some_and(nsswitch_has_subid);
            out.push(doctor::nsswitch(has));
        }
        Err(c) => out.push(c),
    }
    out
}

/// Host uid and gid ranges of every container map on this node.
fn used_host_ranges(paths: &Paths) -> [Vec<IdRange>; 2] {
    let mut out = [Vec::new(), Vec::new()];
    let Ok(entries) = fs::read_dir(paths.host("/etc/pve/lxc")) else {
        return out;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(vmid) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".conf"))
            .and_then(Vmid::parse)
        else {
            continue;
        };
        let Ok(conf) = io::read_conf_main(paths, vmid) else {
            continue;
        };
        if let Ok(Some(map)) = doctor::effective_map(&conf) {
            for m in map {
                let i = usize::from(m.kind == IdKind::Gid);
                out[i].push(m.host_range());
            }
        }
    }
    out
}

/// Containers on this node whose hookscript is pct-passthrough or that have
/// a policy.
fn containers_using_us(paths: &Paths) -> Vec<Vmid> {
    let Ok(entries) = fs::read_dir(paths.host("/etc/pve/lxc")) else {
        return Vec::new();
    };
    let mut out: Vec<Vmid> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let vmid = Vmid::parse(name.to_str()?.strip_suffix(".conf")?)?;
            let ours = io::read_conf_main(paths, vmid).is_ok_and(|c| {
                c.hookscript()
                    .is_some_and(|h| h.rsplit('/').next() == Some("pct-passthrough"))
            });
            (ours || paths.policy(vmid).exists()).then_some(vmid)
        })
        .collect();
    out.sort();
    out
}

fn storage_defs(paths: &Paths) -> Vec<storage::StorageDef> {
    read_text(paths, &paths.storage_cfg(), Limits::HOST_FILE)
        .ok()
        .flatten()
        .map(|t| storage::parse(&t))
        .unwrap_or_default()
}

/// The other cluster nodes (`/etc/pve/.members`) and those install.sh's
/// manifest says it put the binary on; empty outside a cluster.
fn cluster_facts(paths: &Paths) -> ClusterFacts {
    let members: serde_json::Value = read_text(paths, &paths.members(), Limits::HOST_FILE)
        .ok()
        .flatten()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let me = members["nodename"].as_str().unwrap_or_default();
    let others = members["nodelist"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(n, _)| n.as_str() != me)
                .map(|(n, v)| (n.clone(), v["online"].as_u64() == Some(1)))
                .collect()
        })
        .unwrap_or_default();
    let installed_on = read_text(paths, &paths.install_manifest(), Limits::HOST_FILE)
        .ok()
        .flatten()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("remote-binary\t")?.split('\t').next())
        .map(str::to_string)
        .collect();
    ClusterFacts {
        others,
        installed_on,
    }
}

fn hook_file(paths: &Paths, volume: &str) -> HookFile {
    let defs = storage_defs(paths);
    let abs = match storage::snippet_path(volume, &defs) {
        Ok(p) => p,
        Err(e) => return HookFile::Unresolvable(e),
    };
    let host = paths.host(&abs);
    match fs::metadata(&host) {
        Err(_) => HookFile::Missing(abs),
        Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
            HookFile::NotExecutable(abs)
        }
        Ok(_) => {
            let same = match (fs::read(&host), fs::read("/proc/self/exe")) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            };
            HookFile::Present {
                path: abs,
                same_as_this: same,
            }
        }
    }
}

fn container_checks(paths: &Paths, vmid: Vmid, subuid: &str, subgid: &str) -> Vec<Check> {
    let id = vmid.to_string();
    let conf = match io::read_conf(paths, vmid) {
        Ok(c) => c,
        Err(e) => {
            return vec![Check::fail(
                &id,
                format!("{e:#}"),
                "run doctor on the node the container is on (pct list), or fix the file",
            )]
        }
    };
    let mut out = Vec::new();
    // pre-start's own decision: a refusal fails here with its message and fix.
    let planned = next_start::plan(paths, vmid, &mut next_start::StateNotes::default());
    out.extend(next_start_checks(&id, &planned));
    let policy = io::read_policy(paths, vmid).ok().flatten();
    let state = io::load_state(paths, vmid);
    if let Some(p) = &state.problem {
        out.push(Check::warn(
            &id,
            p.clone(),
            "the next phase that records keeps it aside as <name>.corrupt and starts a new state",
        ));
    }
    let state = state.state;

    let volume = conf.hookscript();
    let file = volume.map(|v| hook_file(paths, v));
    out.push(doctor::hookscript(
        &id,
        volume,
        file.as_ref(),
        crate::app::VERSION,
    ));
    if let Some(v) = volume {
        let shared = storage::is_shared(v, &storage_defs(paths));
        out.extend(doctor::hookscript_on_nodes(
            &id,
            v,
            shared,
            &cluster_facts(paths),
        ));
    }
    let runs_us = volume.is_some_and(|v| v.rsplit('/').next() == Some("pct-passthrough"))
        && policy.as_ref().is_none_or(|p| p.enabled);
    out.extend(doctor::container_map(&id, &conf, subuid, subgid, runs_us));
    for d in device_facts(paths, &conf, policy.as_ref()) {
        out.push(doctor::device(&id, &d));
    }
    for dev in conf.dev_entries() {
        if !dev.path.starts_with("/dev/dri/render") {
            continue;
        }
        let Ok(Some(_)) = devnode::resolve(paths, &dev.path) else {
            continue;
        };
        // As post-start saw it inside; else what Proxmox gives it (gid= or 0).
        let seen = state.as_ref().and_then(|s| {
            s.devices
                .iter()
                .find(|v| v.path == dev.path)
                .and_then(|v| v.inside)
        });
        let gid = seen.map_or(dev.gid.unwrap_or(0), |i| i.gid);
        out.extend(doctor::render_group(&id, &dev.path, gid, state.as_ref()));
    }
    out.extend(doctor::group_collisions(&id, state.as_ref()));
    out.push(doctor::runtime_user(&id, state.as_ref()));
    out.extend(file_owner_checks(paths, vmid, &id, &conf, &planned));
    out.extend(mount_form_checks(paths, &id, &conf, policy.as_ref()));
    out
}

/// Files the map does not map (they show as nobody inside), found where the
/// rootfs is reachable; a pending shift is reported instead.
fn file_owner_checks(
    paths: &Paths,
    vmid: Vmid,
    id: &str,
    conf: &PveConfig,
    planned: &Planned,
) -> Vec<Check> {
    let Planned::Decided(b) = planned else {
        return Vec::new();
    };
    let decision = &b.1;
    if !decision.shift.is_empty() {
        return vec![Check::ok(
            id,
            "the next start re-owns the files its ID map change moves (plan shows what)",
        )];
    }
    let Some(map) = &decision.idmap else {
        return Vec::new();
    };
    match crate::phase::shift::unmapped(paths, vmid, conf, map) {
        Ok(Some(r)) if !r.owners.is_empty() => {
            let ids: Vec<String> = r
                .owners
                .iter()
                .map(|(k, v)| format!("host {k}: {v}"))
                .collect();
            vec![Check::warn(
                id,
                format!(
                    "files owned by IDs the container's map does not map show as nobody inside: {}; first: {}",
                    ids.join(", "),
                    r.first.join(", ")
                ),
                "if they belonged to a container ID the map used to give another host ID, put that map back, start once with the hook, then change it with pct-passthrough (it re-owns what moves); else chown them inside to a mapped ID",
            )]
        }
        Ok(Some(_)) => vec![Check::ok(
            id,
            "every file of the rootfs is owned by IDs its map maps",
        )],
        Ok(None) => Vec::new(),
        Err(e) => vec![Check::warn(
            id,
            format!("cannot check the owners of the rootfs's files: {e:#}"),
            "see the message",
        )],
    }
}

/// Container-wide passthroughs that may only serve a bind mount.
fn mount_form_checks(
    paths: &Paths,
    id: &str,
    conf: &PveConfig,
    policy: Option<&Policy>,
) -> Vec<Check> {
    let Some(policy) = policy else {
        return Vec::new();
    };
    let lines: Vec<String> = policy
        .idmap
        .iter()
        .map(|l| l.get_ref().clone())
        .filter(|l| !crate::model::runtime::is_runtime_idmap(l))
        .collect();
    if lines.is_empty() {
        return Vec::new();
    }
    let binds: Vec<crate::model::mountmap::BindOwner> = conf
        .mp_entries()
        .into_iter()
        .filter(|mp| crate::model::mountmap::is_bind(mp) && mp.idmap.is_none())
        .filter_map(|mp| {
            let m = fs::metadata(paths.host(&mp.volume)).ok()?;
            Some(crate::model::mountmap::BindOwner {
                key: format!("mp{}", mp.index),
                host_dir: mp.volume.clone(),
                uid: m.uid(),
                gid: m.gid(),
            })
        })
        .collect();
    if binds.is_empty() {
        return Vec::new();
    }
    let version = io::pve_container_version(paths);
    crate::model::mountmap::suggest_mount_form(&lines, &binds, version.as_deref())
        .into_iter()
        .map(|(what, fix)| Check::warn(id, what, fix))
        .collect()
}

/// pre-start's decision as checks: its refusal (fail), entries a person
/// wrote that must not pass (fail) or cannot work as written (warn).
fn next_start_checks(id: &str, planned: &Planned) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(r) = planned.refusal() {
        let fix = if r.fix.is_empty() {
            "see the message".to_string()
        } else {
            r.fix.clone()
        };
        out.push(Check::fail(
            id,
            format!("the next start is refused: {}", r.what),
            fix,
        ));
    }
    if let Planned::Decided(b) = planned {
        for e in &b.1.events {
            let fix = e.fix.clone().unwrap_or_else(|| "see the message".into());
            if devices::ENTRY_DANGERS.contains(&e.name) {
                out.push(Check::fail(id, e.message.clone(), fix));
            } else if devices::ENTRY_FINDINGS.contains(&e.name) || e.name == "dev-fallback" {
                out.push(Check::warn(id, e.message.clone(), fix));
            }
        }
    }
    if out.is_empty() {
        out.push(Check::ok(id, "pre-start would start it"));
    }
    out
}

/// Devices the container names, each resolved under the root.
fn device_facts(paths: &Paths, conf: &PveConfig, policy: Option<&Policy>) -> Vec<DeviceFacts> {
    device::declared(conf, policy)
        .into_iter()
        .map(|d| {
            let resolved = devnode::resolve(paths, &d.path).ok().flatten();
            let (node, by_id, usb) = match &resolved {
                Some((node, meta)) => (
                    Some(node.clone()),
                    devnode::by_id_links(paths, meta).into_iter().next(),
                    devnode::usb_attrs(node),
                ),
                None => (None, None, None),
            };
            DeviceFacts {
                source: d.source.label(),
                path: d.path,
                node,
                required: d.required,
                by_id,
                usb,
            }
        })
        .collect()
}
