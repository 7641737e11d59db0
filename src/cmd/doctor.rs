//! `pct-passthrough doctor [<vmid>]`: gathers host and container facts
//! (reads only), asks `model::doctor` for verdicts, prints one line per
//! check with its fix. Exit 1 if any check fails.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::model::doctor::{self, Check, DeviceFacts, HookFile};
use crate::model::idmap::{IdKind, IdRange};
use crate::model::policy::Policy;
use crate::model::pveconf::PveConfig;
use crate::model::state::State;
use crate::model::storage;
use crate::model::subid::nsswitch_has_subid;
use crate::model::text::Limits;
use crate::paths::{Paths, Vmid};
use crate::sys::devnode;
use crate::sys::fs::read_text;

/// Runs every check and prints the report; returns the exit code.
pub fn run(paths: &Paths, vmid: Option<Vmid>) -> u8 {
    let mut checks = host_checks(paths);
    let subuid = read_text(&paths.subuid(), Limits::HOST_FILE)
        .ok()
        .flatten()
        .unwrap_or_default();
    let subgid = read_text(&paths.subgid(), Limits::HOST_FILE)
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
    read_text(&paths.host(abs), limits).map_err(|e| {
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
        let p = e.path();
        if p.extension().is_none_or(|x| x != "conf") {
            continue;
        }
        let Some(text) = read_text(&p, Limits::PVE_CONFIG).ok().flatten() else {
            continue;
        };
        if let Ok(Some(map)) = doctor::effective_map(&PveConfig::parse(&text)) {
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
            let ours = read_text(&paths.pve_conf(vmid), Limits::PVE_CONFIG)
                .ok()
                .flatten()
                .is_some_and(|t| {
                    PveConfig::parse(&t)
                        .hookscript()
                        .is_some_and(|h| h.rsplit('/').next() == Some("pct-passthrough"))
                });
            (ours || paths.policy(vmid).exists()).then_some(vmid)
        })
        .collect();
    out.sort();
    out
}

fn hook_file(paths: &Paths, volume: &str) -> HookFile {
    let defs = read_text(&paths.storage_cfg(), Limits::HOST_FILE)
        .ok()
        .flatten()
        .map(|t| storage::parse(&t))
        .unwrap_or_default();
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
    let conf_abs = format!("/etc/pve/lxc/{vmid}.conf");
    let conf = match read(paths, &conf_abs, Limits::PVE_CONFIG, &id) {
        Ok(Some(t)) => PveConfig::parse(&t),
        Ok(None) => {
            return vec![Check::fail(
                &id,
                format!("{conf_abs} does not exist on this node"),
                "run doctor on the node the container is on (pct list)",
            )]
        }
        Err(c) => return vec![c],
    };
    let mut out = Vec::new();
    let policy_abs = format!("/etc/pve/pct-passthrough/{vmid}.toml");
    let policy = match read(paths, &policy_abs, Limits::HOST_FILE, &id) {
        Ok(Some(t)) => match Policy::parse(&policy_abs, &t) {
            Ok(p) => Some(p),
            Err(e) => {
                out.push(Check::fail(
                    &id,
                    e,
                    format!("fix {policy_abs}; pre-start refuses to start with it"),
                ));
                None
            }
        },
        Ok(None) => None,
        Err(c) => {
            out.push(c);
            None
        }
    };
    let state = read(
        paths,
        &format!("/var/lib/pct-passthrough/{vmid}.json"),
        Limits::HOST_FILE,
        &id,
    )
    .ok()
    .flatten()
    .and_then(|t| State::parse(&t).ok());

    let volume = conf.hookscript();
    let file = volume.map(|v| hook_file(paths, v));
    out.push(doctor::hookscript(
        &id,
        volume,
        file.as_ref(),
        crate::app::VERSION,
    ));
    let runs_us = volume.is_some_and(|v| v.rsplit('/').next() == Some("pct-passthrough"))
        && policy.as_ref().is_none_or(|p| p.enabled);
    out.extend(doctor::container_map(&id, &conf, subuid, subgid, runs_us));
    if policy.as_ref().is_some_and(|p| p.chain.is_some()) {
        out.push(match crate::phase::chain::find(paths, vmid) {
            Ok(Some(c)) => Check::ok(
                &id,
                format!("chained hookscript {} is present and executable", c.volume),
            ),
            Ok(None) => Check::ok(&id, "no chained hookscript"),
            Err(e) => Check::fail(
                &id,
                format!("{e:#}; pre-start refuses every start"),
                format!("fix or remove 'chain' in {policy_abs}"),
            ),
        });
    }

    for d in device_facts(paths, &conf, policy.as_ref()) {
        out.push(doctor::device(&id, &d));
    }
    out.extend(device_entry_checks(
        paths,
        vmid,
        &conf,
        policy.as_ref(),
        state.as_ref(),
    ));
    for dev in conf.dev_entries() {
        if !dev.path.starts_with("/dev/dri/render") {
            continue;
        }
        let Ok(Some((_, meta))) = devnode::resolve(paths, &dev.path) else {
            continue;
        };
        let gid = dev.gid.unwrap_or(meta.gid());
        out.extend(doctor::render_group(&id, &dev.path, gid, state.as_ref()));
    }
    out.extend(doctor::group_collisions(&id, state.as_ref()));
    out.push(doctor::runtime_user(&id, state.as_ref()));
    out
}

/// Devices the container names, each resolved under the root.
fn device_facts(paths: &Paths, conf: &PveConfig, policy: Option<&Policy>) -> Vec<DeviceFacts> {
    let wanted = doctor::wanted_devices(conf, policy);
    wanted
        .into_iter()
        .map(|(source, path, required)| {
            let resolved = devnode::resolve(paths, &path).ok().flatten();
            let (node, by_id, usb) = match &resolved {
                Some((node, meta)) => (
                    Some(node.clone()),
                    devnode::by_id_links(paths, meta).into_iter().next(),
                    devnode::usb_attrs(node),
                ),
                None => (None, None, None),
            };
            DeviceFacts {
                source,
                path,
                node,
                required,
                by_id,
                usb,
            }
        })
        .collect()
}

/// The devices step's findings about entries a person wrote (stale or
/// broad cgroup rules, bind options, a `devN` group the service is not in),
/// as pre-start logs them at every start.
fn device_entry_checks(
    paths: &Paths,
    vmid: Vmid,
    conf: &PveConfig,
    policy: Option<&Policy>,
    state: Option<&State>,
) -> Vec<Check> {
    use crate::model::devplan::{self, DeviceFact};
    let id = vmid.to_string();
    let mut facts = crate::model::prestart::Facts::minimal(
        vmid.get(),
        &paths.pve_conf(vmid).display().to_string(),
        conf.clone(),
    );
    facts.policy = policy.cloned();
    facts.state = state.cloned();
    facts.devices = devplan::declared_paths(conf, policy)
        .into_iter()
        .map(|path| DeviceFact {
            node: devnode::node(paths, &path).map_err(|e| e.to_string()),
            path,
        })
        .collect();
    let mut draft = crate::model::prestart::Draft::new(&facts);
    let _ = devplan::plan_devices(&facts, &mut draft);
    draft
        .events
        .iter()
        .filter(|e| devplan::ENTRY_FINDINGS.contains(&e.name))
        .map(|e| match e.message.rsplit_once("; ") {
            Some((what, fix)) => Check::warn(&id, what, fix),
            None => Check::warn(&id, e.message.clone(), "see the message"),
        })
        .collect()
}
