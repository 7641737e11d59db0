//! The shift hook (`pct-passthrough lxc-shift-hook`): LXC runs it from the
//! `lxc.hook.pre-start` line pre-start adds when the map moves IDs, as host
//! root in the monitor's mount namespace, after Proxmox's own pre-start hook
//! mounted the rootfs and the mount points at `/var/lib/lxc/<vmid>/rootfs`.
//! It applies the state's journal of map changes to the rootfs and every
//! storage-backed mount point (never a bind mount of a host directory,
//! never across a mount), step by step, and records each step done. A
//! failure fails the start: no file shows with the wrong owner; the next
//! start resumes. Also the read-only previews for `plan` and `doctor`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use super::io;
use crate::model::idmap::{IdKind, IdmapEntry};
use crate::model::mountmap;
use crate::model::pveconf::PveConfig;
use crate::model::shift::{parse_map, plan_inode, Inflight, Moves, ShiftReport, ShiftStep};
use crate::model::state::ShiftRecord;
use crate::paths::{Paths, Vmid};
use crate::sys::log::Log;
use crate::sys::shift::{self as sys, Entry};

/// One tree to re-own: the path the container sees and where it is now.
pub struct Root {
    pub label: String,
    pub fd: std::os::fd::OwnedFd,
    pub host: PathBuf,
}

/// Where Proxmox mounts the container's rootfs for a start (and `pct mount`).
pub fn rootfs_dir(paths: &Paths, vmid: Vmid) -> PathBuf {
    paths.host(format!("/var/lib/lxc/{vmid}/rootfs"))
}

/// The rootfs and each storage-backed mount point mounted under it. Bind
/// mounts of host directories, mount points with their own `idmap=`,
/// read-only ones and ones not mounted are left out (pre-start said so).
pub fn roots(rootfs: &Path, conf: &PveConfig) -> Result<Vec<Root>> {
    let (fd, _) =
        sys::open_below(rootfs, "")?.ok_or_else(|| anyhow!("{}: not there", rootfs.display()))?;
    let mut out = vec![Root {
        label: "/".into(),
        fd,
        host: rootfs.to_path_buf(),
    }];
    for mp in conf.mp_entries() {
        let ro = mp
            .value
            .split(',')
            .any(|p| matches!(p, "ro=1" | "ro=yes" | "ro=on" | "ro=true"));
        let Some(path) = mp.mp.clone() else { continue };
        if mountmap::is_bind(&mp) || mp.idmap.is_some() || ro {
            continue;
        }
        if let Some((fd, true)) = sys::open_below(rootfs, &path)? {
            out.push(Root {
                label: path.clone(),
                fd,
                host: rootfs.join(path.trim_start_matches('/')),
            });
        }
    }
    Ok(out)
}

/// Re-owns (or, with `apply` false, only counts) one tree for one map
/// change. `before_chown` is called for an inode whose chown clears what
/// must be restored (set-ID bits, a capability), before the chown.
fn shift_root(
    root: Root,
    moves: &Moves,
    apply: bool,
    before_chown: &mut dyn FnMut(Option<Inflight>) -> Result<()>,
) -> Result<ShiftReport> {
    let mut report = ShiftReport::default();
    let mut seen: HashSet<(u32, u32, u64)> = HashSet::new();
    let label = root.label.clone();
    let skipped = sys::walk_fd(root.fd, &root.host, &mut |e: &Entry<'_>| {
        if !e.stat.is_dir()
            && e.stat.nlink > 1
            && !seen.insert((e.stat.dev.0, e.stat.dev.1, e.stat.ino))
        {
            return Ok(());
        }
        // Cheap test first: most inodes neither move nor carry xattrs
        // that could (ACLs and capabilities are read for all but symlinks).
        let facts = sys::read_inode(e)?;
        let change = plan_inode(moves, &facts).map_err(|m| anyhow!(m))?;
        if change.is_empty() {
            return Ok(());
        }
        report.count(&facts, &change, || e.display(&label));
        if !apply {
            return Ok(());
        }
        let restore = change.owner.is_some() && (change.mode.is_some() || change.cap.is_some());
        if restore {
            before_chown(Some(Inflight {
                root: label.clone(),
                rel: e.rel.to_vec(),
                ino: e.stat.ino,
                mode: change.mode.unwrap_or(facts.mode & 0o7777),
                cap: change.cap.clone(),
            }))?;
        }
        sys::apply_inode(e, &change)?;
        if restore {
            before_chown(None)?;
        }
        Ok(())
    })?;
    report.not_entered = skipped
        .iter()
        .map(|r| {
            let rel = crate::model::shift::escape_path(r);
            format!("{}/{rel}", label.trim_end_matches('/'))
        })
        .collect();
    Ok(report)
}

/// Finishes an inode whose chown happened before a crash.
fn resume_inflight(roots: &[Root], f: &Inflight) -> Result<()> {
    let Some(root) = roots.iter().find(|r| r.label == f.root) else {
        return Ok(());
    };
    let Some((dir, name, stat)) = sys::reopen(&root.host, &f.rel)? else {
        return Ok(());
    };
    if stat.ino != f.ino || stat.is_symlink() {
        return Ok(());
    }
    let e = Entry {
        dir: std::os::fd::AsFd::as_fd(&dir),
        name: &name,
        rel: &f.rel,
        stat,
    };
    let change = crate::model::shift::InodeChange {
        owner: None,
        mode: (stat.mode & 0o7777 != f.mode).then_some(f.mode),
        cap: f.cap.clone(),
        acl_access: None,
        acl_default: None,
    };
    sys::apply_inode(&e, &change)
}

fn moves_of(step: &ShiftStep) -> Result<Moves> {
    let from = parse_map(&step.from).map_err(|e| anyhow!("journal: {e}"))?;
    let to = parse_map(&step.to).map_err(|e| anyhow!("journal: {e}"))?;
    Moves::between(&from, &to).map_err(|e| anyhow!("journal: {e}"))
}

/// The hook's entry: LXC appends `<name> lxc pre-start`. Exit 1 fails the
/// start.
pub fn run_hook(paths: &Paths, args: &[String]) -> u8 {
    let name = std::env::var("LXC_NAME")
        .ok()
        .or_else(|| args.first().cloned())
        .unwrap_or_default();
    let mut log = Log::new(&name, "shift");
    let Some(vmid) = Vmid::parse(&name) else {
        log.error(
            "shift-args",
            format!("container name '{name}' is not a VMID; nothing done"),
        );
        return 1;
    };
    match hook(paths, vmid, &mut log) {
        Ok(()) => 0,
        Err(e) => {
            log.error(
                "shift-failed",
                format!(
                    "re-owning the container's files for its new ID map failed: {e:#}; the start is stopped so that no file shows with the wrong owner, and the next start resumes where this one stopped (journal in {})",
                    paths.state(vmid).display()
                ),
            );
            1
        }
    }
}

fn hook(paths: &Paths, vmid: Vmid, log: &mut Log) -> Result<()> {
    let state = io::load_state(paths, vmid);
    let Some(st) = state.state else {
        return Ok(());
    };
    if st.shift.is_empty() {
        return Ok(());
    }
    let conf = io::read_conf_main(paths, vmid)?;
    let rootfs = rootfs_dir(paths, vmid);
    if let Some(f) = &st.shift.inflight {
        resume_inflight(&roots(&rootfs, &conf)?, f).context("finishing the inode in flight")?;
        io::update_state(paths, vmid, |s| s.shift.inflight = None)?;
    }
    let mut total = ShiftReport::default();
    for step in &st.shift.steps {
        let moves = moves_of(step)?;
        if !step.started {
            io::update_state(paths, vmid, |s| {
                if let Some(first) = s.shift.steps.first_mut().filter(|f| f.same_change(step)) {
                    first.started = true;
                }
            })?;
        }
        for root in roots(&rootfs, &conf)? {
            let label = root.label.clone();
            let r = shift_root(root, &moves, true, &mut |inflight| {
                io::update_state(paths, vmid, |s| s.shift.inflight = inflight.clone()).map(|_| ())
            })
            .with_context(|| format!("in {label}"))?;
            total.merge(r);
        }
        let done = step.clone();
        io::update_state(paths, vmid, |s| {
            if s.shift.steps.first().is_some_and(|f| f.same_change(&done)) {
                s.shift.steps.remove(0);
            }
            s.files_idmap = Some(done.to.clone());
        })?;
    }
    let summary = total.summary();
    log.info("shift-done", format!("before init: {summary}"));
    for m in &total.not_entered {
        log.audit(&crate::model::event::Event::info(
            "shift-not-entered",
            format!("{m} is another mount: not re-owned"),
        ));
    }
    io::update_state(paths, vmid, |s| {
        s.last_shift = Some(ShiftRecord {
            at: io::now_secs(),
            summary: summary.clone(),
            reported: false,
        });
    })?;
    Ok(())
}

/// What the pending shift would re-own, counted on the trees reachable now
/// (`/var/lib/lxc/<vmid>/rootfs` when Proxmox or `pct mount` mounted it, or
/// a directory rootfs). `None` when no rootfs is reachable.
pub fn preview(
    paths: &Paths,
    vmid: Vmid,
    conf: &PveConfig,
    steps: &[ShiftStep],
) -> Result<Option<ShiftReport>> {
    let rootfs = rootfs_dir(paths, vmid);
    if !reachable(&rootfs) {
        return Ok(None);
    }
    let mut total = ShiftReport::default();
    for step in steps {
        let moves = moves_of(step)?;
        for root in roots(&rootfs, conf)? {
            total.merge(shift_root(root, &moves, false, &mut |_| Ok(()))?);
        }
    }
    Ok(Some(total))
}

/// A rootfs with something in it (an empty directory is only the mount
/// point Proxmox mounts on at start).
fn reachable(rootfs: &Path) -> bool {
    std::fs::read_dir(rootfs).is_ok_and(|mut d| d.next().is_some())
}

/// Files whose owner or group the map does not map (they show as nobody
/// inside): a count per host ID and the first paths. For `doctor`.
pub fn unmapped(
    paths: &Paths,
    vmid: Vmid,
    conf: &PveConfig,
    map: &[IdmapEntry],
) -> Result<Option<ShiftReport>> {
    let rootfs = rootfs_dir(paths, vmid);
    if !reachable(&rootfs) {
        return Ok(None);
    }
    let mapped = |kind: IdKind, id: u32| {
        map.iter().any(|e| {
            e.kind == kind
                && e.host_range().start <= u64::from(id)
                && u64::from(id) < e.host_range().end
        })
    };
    let mut report = ShiftReport::default();
    for root in roots(&rootfs, conf)? {
        let label = root.label.clone();
        sys::walk_fd(root.fd, &root.host, &mut |e: &Entry<'_>| {
            let mut hit = false;
            for (kind, id) in [(IdKind::Uid, e.stat.uid), (IdKind::Gid, e.stat.gid)] {
                if !mapped(kind, id) {
                    *report
                        .owners
                        .entry(format!("{} {id}", kind.word()))
                        .or_default() += 1;
                    hit = true;
                }
            }
            if hit && report.first.len() < crate::model::shift::FIRST_PATHS {
                report.first.push(e.display(&label));
            }
            Ok(())
        })?;
    }
    Ok(Some(report))
}
