//! Bind mount points (`mpN: /host/dir,mp=/path[,idmap=...]`) as Proxmox's
//! `lxc-pve-prestart-hook` inserts them: a detached clone of the host
//! directory (`open_tree(OPEN_TREE_CLONE)`), with a per-mount-point map
//! made an idmapped mount (`mount_setattr(MOUNT_ATTR_IDMAP)` with a user
//! namespace of `resolve_mountpoint_idmap`'s map, disk ID to host ID),
//! moved onto the path in the rootfs (`move_mount`). Difference: the bed
//! does this in its own mount namespace just before `lxc-start` (the dir
//! rootfs is bind-mounted recursively by LXC, so the mount comes along),
//! where Proxmox does it in the monitor's namespace; storage-backed mount
//! points are not supported.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::genconf::{IdMap, PveConf};

/// One `mpN` bind mount of a host directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMp {
    pub key: String,
    pub host_dir: String,
    pub mp: String,
    /// `None`: no `idmap=`; `Some(None)`: `passthrough`.
    pub idmap: Option<Option<Vec<IdMap>>>,
}

/// The bind mount points of a config (storage volumes are skipped).
pub fn bind_mps(conf: &PveConf) -> Result<Vec<BindMp>, String> {
    let mut out = Vec::new();
    for (k, v) in &conf.keys {
        let Some(n) = k.strip_prefix("mp") else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let mut parts = v.split(',');
        let vol = parts
            .next()
            .unwrap_or_default()
            .trim_start_matches("volume=");
        if !vol.starts_with('/') {
            continue;
        }
        let mut mp = None;
        let mut idmap = None;
        for p in parts {
            match p.split_once('=') {
                Some(("mp", m)) => mp = Some(m.to_string()),
                Some(("idmap", "passthrough")) => idmap = Some(None),
                Some(("idmap", m)) => idmap = Some(Some(parse_mp_idmap(m)?)),
                _ => {}
            }
        }
        out.push(BindMp {
            key: k.clone(),
            host_dir: vol.to_string(),
            mp: mp.ok_or_else(|| format!("{k}: no mp="))?,
            idmap,
        });
    }
    Ok(out)
}

/// `[ug]:CT:DISK:LEN` entries (`ct` holds CT, `host` holds DISK).
fn parse_mp_idmap(v: &str) -> Result<Vec<IdMap>, String> {
    v.split(';')
        .map(|e| {
            let f: Vec<&str> = e.split(':').collect();
            let num = |s: &str| {
                s.parse::<u32>()
                    .map_err(|_| format!("failed to parse mount point idmap: {e}"))
            };
            match f.as_slice() {
                [k @ ("u" | "g"), c, d, l] => Ok(IdMap {
                    kind: k.chars().next().unwrap_or('u'),
                    ct: num(c)?,
                    host: num(d)?,
                    len: num(l)?,
                }),
                _ => Err(format!("failed to parse mount point idmap: {e}")),
            }
        })
        .collect()
}

/// `resolve_mountpoint_idmap`: the (type, disk, host, len) lines of the
/// mount's user namespace. Within each chunk of the container map, IDs a
/// mount point entry names map their disk ID to the chunk's host ID; the
/// rest map host ID to itself.
pub fn resolve(ct_map: &[IdMap], mp: &Option<Vec<IdMap>>) -> Vec<(char, u64, u64, u64)> {
    let Some(exc) = mp else {
        return ct_map
            .iter()
            .map(|m| (m.kind, u64::from(m.ct), u64::from(m.host), u64::from(m.len)))
            .collect();
    };
    let mut out = Vec::new();
    for kind in ['u', 'g'] {
        let mut ex: Vec<&IdMap> = exc.iter().filter(|e| e.kind == kind).collect();
        ex.sort_by_key(|e| e.ct);
        for chunk in ct_map.iter().filter(|m| m.kind == kind) {
            let (cs, hs) = (u64::from(chunk.ct), u64::from(chunk.host));
            let ce = cs + u64::from(chunk.len);
            let mut at = cs;
            let inside = ex
                .iter()
                .filter(|e| u64::from(e.ct) < ce && u64::from(e.ct) + u64::from(e.len) > cs)
                .map(|e| (u64::from(e.ct), u64::from(e.host), u64::from(e.len)))
                .chain([(ce, 0, 0)]);
            for (ect, edisk, elen) in inside {
                let cct = ect.max(cs);
                let clen = (ect + elen).min(ce).saturating_sub(cct);
                if at < cct {
                    let host = hs + (at - cs);
                    out.push((kind, host, host, cct - at));
                }
                if clen > 0 {
                    out.push((kind, edisk + cct - ect, hs + cct - cs, clen));
                }
                at = cct + clen;
            }
        }
    }
    out
}

/// A user namespace with these (type, inside, outside, len) lines, as an fd.
fn userns(lines: &[(char, u64, u64, u64)]) -> Result<OwnedFd, String> {
    let mut child = Command::new("unshare")
        .args(["--user", "--", "sleep", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("unshare: {e}"))?;
    let pid = child.id();
    let ours = fs::read_link("/proc/self/ns/user").map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::read_link(format!("/proc/{pid}/ns/user")).is_ok_and(|l| l == ours) {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("unshare --user did not enter a namespace".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let map = |kind: char| -> String {
        lines
            .iter()
            .filter(|l| l.0 == kind)
            .map(|l| format!("{} {} {}\n", l.1, l.2, l.3))
            .collect()
    };
    let res = (|| {
        fs::write(format!("/proc/{pid}/uid_map"), map('u')).map_err(|e| format!("uid_map: {e}"))?;
        fs::write(format!("/proc/{pid}/gid_map"), map('g')).map_err(|e| format!("gid_map: {e}"))?;
        let f = fs::File::open(format!("/proc/{pid}/ns/user")).map_err(|e| e.to_string())?;
        Ok(OwnedFd::from(f))
    })();
    let _ = child.kill();
    let _ = child.wait();
    res
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("path without NUL")
}

/// `open_tree` + optional `mount_setattr(MOUNT_ATTR_IDMAP)` + `move_mount`.
fn insert(src: &Path, dst: &Path, ns: Option<&OwnedFd>) -> Result<(), String> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let s = cstr(src);
    // SAFETY: a NUL-terminated path; the returned fd is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            s.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(format!(
            "open_tree {}: {}",
            src.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if let Some(ns) = ns {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: ns.as_raw_fd() as u64,
        };
        // SAFETY: `attr` is a valid mount_attr of the size passed; "" with
        // AT_EMPTY_PATH names `tree` itself.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mount_setattr: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let d = cstr(dst);
    // SAFETY: both paths are NUL-terminated; "" with the flag names `tree`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            d.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(format!(
            "move_mount to {}: {}",
            dst.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Inserts every bind mount point of `conf` under `rootfs`; a privileged
/// container ignores `idmap=` (Proxmox warns).
pub fn insert_all(rootfs: &Path, conf: &PveConf) -> Result<(), String> {
    let mps = bind_mps(conf)?;
    if mps.is_empty() {
        // Without mount points, a malformed map fails later, in LXC.
        return Ok(());
    }
    let ct_map = conf.effective_idmap()?;
    for m in mps {
        let dst = rootfs.join(m.mp.trim_start_matches('/'));
        fs::create_dir_all(&dst).map_err(|e| format!("{}: {e}", dst.display()))?;
        let ns = match (&m.idmap, ct_map.is_empty()) {
            (Some(map), false) => Some(userns(&resolve(&ct_map, map))?),
            _ => None,
        };
        insert(Path::new(&m.host_dir), &dst, ns.as_ref()).map_err(|e| format!("{}: {e}", m.key))?;
    }
    Ok(())
}
