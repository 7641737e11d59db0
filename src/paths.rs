//! Every host path the tool touches, under one root (`PCT_PASSTHROUGH_ROOT`,
//! default `/`). `/proc` and `/sys` are never prefixed and are not here.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::sys::fs::RootFd;

/// A Proxmox guest ID, 100 to 999999999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vmid(u32);

impl Vmid {
    pub const MIN: u32 = 100;
    pub const MAX: u32 = 999_999_999;

    pub fn new(n: u32) -> Option<Vmid> {
        (Self::MIN..=Self::MAX).contains(&n).then_some(Vmid(n))
    }

    /// Parses a VMID as Proxmox's `pve-vmid` format does
    /// (`^[1-9][0-9]{2,8}$`): decimal digits only, no sign, no spaces, no
    /// leading zero (`0105` is not 105).
    pub fn parse(s: &str) -> Option<Vmid> {
        if s.is_empty()
            || s.len() > 9
            || s.starts_with('0')
            || !s.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Vmid::new(s.parse().ok()?)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Host paths, all under `root`.
#[derive(Debug, Clone)]
pub struct Paths {
    root: PathBuf,
    /// The root's descriptor, opened on first use under a temp root; a
    /// clone starts without one (see [`RootFd`]).
    root_fd: RootFd,
}

/// Equal when the roots are: the cached descriptor is not part of it.
impl PartialEq for Paths {
    fn eq(&self, other: &Paths) -> bool {
        self.root == other.root
    }
}

impl Eq for Paths {}

impl Paths {
    pub const ROOT_ENV: &'static str = "PCT_PASSTHROUGH_ROOT";

    /// Reads `PCT_PASSTHROUGH_ROOT`; an empty or unset value means `/`.
    pub fn from_env() -> Paths {
        match std::env::var_os(Self::ROOT_ENV) {
            Some(v) if !v.is_empty() => Paths::with_root(PathBuf::from(v)),
            _ => Paths::with_root(PathBuf::from("/")),
        }
    }

    pub fn with_root(root: impl Into<PathBuf>) -> Paths {
        Paths {
            root: root.into(),
            root_fd: RootFd::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cached root descriptor, for `sys::fs` only.
    pub(crate) fn root_fd(&self) -> &RootFd {
        &self.root_fd
    }

    pub fn is_real_root(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `abs` (an absolute host path such as `/etc/subuid`) under the root.
    pub fn host(&self, abs: impl AsRef<Path>) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let abs = abs.as_ref();
        // The common case, `/` and plain names, is joined as it is.
        if let Some(rel) = abs.as_os_str().as_bytes().strip_prefix(b"/") {
            if !rel.is_empty()
                && rel
                    .split(|b| *b == b'/')
                    .all(|n| !n.is_empty() && n != b"." && n != b"..")
            {
                return self.root.join(std::ffi::OsStr::from_bytes(rel));
            }
        }
        let rel: PathBuf = abs
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        self.root.join(rel)
    }

    pub fn pve_conf(&self, vmid: Vmid) -> PathBuf {
        self.host(format!("/etc/pve/lxc/{vmid}.conf"))
    }

    pub fn policy(&self, vmid: Vmid) -> PathBuf {
        self.host(format!("/etc/pve/pct-passthrough/{vmid}.toml"))
    }

    /// The cluster file system (pmxcfs on Proxmox).
    pub fn pve_dir(&self) -> PathBuf {
        self.host("/etc/pve")
    }

    /// The cluster's member list, as pmxcfs shows it.
    pub fn members(&self) -> PathBuf {
        self.host("/etc/pve/.members")
    }

    /// The part of the state that follows the container across nodes.
    pub fn cluster_state(&self, vmid: Vmid) -> PathBuf {
        self.host(format!("/etc/pve/pct-passthrough/{vmid}.state.json"))
    }

    /// `install.sh`'s record of what it changed (node-local).
    pub fn install_manifest(&self) -> PathBuf {
        self.host("/var/lib/pct-passthrough/install/manifest")
    }

    pub fn storage_cfg(&self) -> PathBuf {
        self.host("/etc/pve/storage.cfg")
    }

    pub fn subuid(&self) -> PathBuf {
        self.host("/etc/subuid")
    }

    pub fn subgid(&self) -> PathBuf {
        self.host("/etc/subgid")
    }

    /// shadow's `lckpwdf()` lock file.
    pub fn pwd_lock(&self) -> PathBuf {
        self.host("/etc/.pwd.lock")
    }

    pub fn nsswitch(&self) -> PathBuf {
        self.host("/etc/nsswitch.conf")
    }

    /// The config PVE generated for this start.
    pub fn lxc_config(&self, vmid: Vmid) -> PathBuf {
        self.host(format!("/var/lib/lxc/{vmid}/config"))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.host("/var/lib/pct-passthrough")
    }

    /// The node-local part of the state (all of it in version 1).
    pub fn state(&self, vmid: Vmid) -> PathBuf {
        self.state_dir().join(format!("{vmid}.json"))
    }

    pub fn lock_dir(&self) -> PathBuf {
        self.host("/run/lock/pct-passthrough")
    }

    /// The tool's own per-container lock (post-start worker, state).
    pub fn own_lock(&self, vmid: Vmid) -> PathBuf {
        self.lock_dir().join(format!("{vmid}.lock"))
    }

    /// Held by post-start's detached worker: one worker per container.
    pub fn worker_lock(&self, vmid: Vmid) -> PathBuf {
        self.lock_dir().join(format!("{vmid}.worker.lock"))
    }

    /// The tool's host-wide lock around subordinate-ID edits.
    pub fn subid_lock(&self) -> PathBuf {
        self.lock_dir().join("subid.lock")
    }

    /// PVE's config lock, taken by by-hand runs only.
    pub fn pve_config_lock(&self, vmid: Vmid) -> PathBuf {
        self.host(format!("/run/lock/lxc/pve-config-{vmid}.lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmid_range_is_exact() {
        assert_eq!(Vmid::parse("99"), None);
        assert_eq!(Vmid::parse("100").map(Vmid::get), Some(100));
        assert_eq!(Vmid::parse("999999999").map(Vmid::get), Some(999_999_999));
        assert_eq!(Vmid::parse("1000000000"), None);
        assert_eq!(Vmid::parse("+105"), None);
        assert_eq!(Vmid::parse("0105"), None);
        assert_eq!(Vmid::parse("00000105"), None);
        assert_eq!(Vmid::parse("0"), None);
        assert_eq!(Vmid::parse(""), None);
    }

    #[test]
    fn host_paths_stay_under_the_root() {
        let p = Paths::with_root("/tmp/r");
        let v = Vmid::new(105).unwrap();
        assert_eq!(p.pve_conf(v), PathBuf::from("/tmp/r/etc/pve/lxc/105.conf"));
        assert_eq!(p.host("/../../etc/x"), PathBuf::from("/tmp/r/etc/x"));
        assert_eq!(
            p.pve_config_lock(v),
            PathBuf::from("/tmp/r/run/lock/lxc/pve-config-105.lock")
        );
        // Only plain names take the short way; the rest drop to names,
        // and both give the same bytes.
        for (abs, want) in [
            ("/etc/subgid", "/tmp/r/etc/subgid"),
            ("/", "/tmp/r/"),
            ("", "/tmp/r/"),
            ("etc/x", "/tmp/r/etc/x"),
            ("/etc//x", "/tmp/r/etc/x"),
            ("/etc/./x/", "/tmp/r/etc/x"),
            ("/etc/../x", "/tmp/r/etc/x"),
            ("/etc/..x/.y", "/tmp/r/etc/..x/.y"),
        ] {
            let got = p.host(abs);
            assert_eq!(got.as_os_str(), want, "{abs:?}");
        }
    }
}
