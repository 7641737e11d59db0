//! Host-side device stand-ins: a pty whose slave looks like a USB serial
//! adapter (`root:dialout 0660`, a udev-style by-id link), and harmless
//! char nodes (for render-node tests). Each removes itself on drop.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

/// Where by-id links go: the real udev directory, so that configs can name
/// them exactly as on a Proxmox host. Our links carry this prefix.
pub const BY_ID_DIR: &str = "/dev/serial/by-id";
pub const BY_ID_PREFIX: &str = "usb-pct-passthrough-e2e_";
/// Where char-node stand-ins go.
pub const NODE_DIR: &str = "/dev/pct-passthrough-e2e";

/// The host GID of `dialout` on Debian and Proxmox.
pub const DIALOUT: u32 = 20;

/// A pty pair standing in for `/dev/ttyUSB0`. The slave (`/dev/pts/N`) is
/// `root:dialout 0660`; `by_id` is a relative udev-style link to it. The bed
/// keeps the master and one slave fd open, so data the container writes can
/// be read back after the container closed its end.
#[derive(Debug)]
pub struct PtySerial {
    master: OwnedFd,
    _slave: File,
    /// `/dev/pts/N`.
    pub slave: PathBuf,
    /// `/dev/serial/by-id/usb-pct-passthrough-e2e_<tag>-if00-port0`.
    pub by_id: PathBuf,
    pub major: u32,
    pub minor: u32,
}

impl PtySerial {
    /// The `lxc.mount.entry` line that binds this stick at `/dev/ttyUSB0`,
    /// as a person writes it for a serial device.
    pub fn bind_entry(&self) -> String {
        format!(
            "lxc.mount.entry: {} dev/ttyUSB0 none bind,optional,create=file",
            self.by_id.display()
        )
    }

    pub(crate) fn create(tag: &str) -> PtySerial {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .unwrap_or_else(|e| panic!("e2e: posix_openpt: {e}"));
        grantpt(&master).unwrap_or_else(|e| panic!("e2e: grantpt: {e}"));
        unlockpt(&master).unwrap_or_else(|e| panic!("e2e: unlockpt: {e}"));
        let slave =
            PathBuf::from(ptsname_r(&master).unwrap_or_else(|e| panic!("e2e: ptsname: {e}")));
        let slave_fd = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&slave)
            .unwrap_or_else(|e| panic!("e2e: {}: {e}", slave.display()));
        // Raw mode, so bytes arrive as written (no \n -> \r\n, no echo).
        let mut t = tcgetattr(slave_fd.as_fd()).unwrap_or_else(|e| panic!("e2e: tcgetattr: {e}"));
        cfmakeraw(&mut t);
        tcsetattr(slave_fd.as_fd(), SetArg::TCSANOW, &t)
            .unwrap_or_else(|e| panic!("e2e: tcsetattr: {e}"));
        std::os::unix::fs::chown(&slave, Some(0), Some(DIALOUT))
            .unwrap_or_else(|e| panic!("e2e: chown {}: {e}", slave.display()));
        fs::set_permissions(&slave, fs::Permissions::from_mode(0o660))
            .unwrap_or_else(|e| panic!("e2e: chmod {}: {e}", slave.display()));
        let rdev = fs::metadata(&slave)
            .unwrap_or_else(|e| panic!("e2e: {}: {e}", slave.display()))
            .rdev();
        fs::create_dir_all(BY_ID_DIR).unwrap_or_else(|e| panic!("e2e: {BY_ID_DIR}: {e}"));
        let by_id = Path::new(BY_ID_DIR).join(format!("{BY_ID_PREFIX}{tag}-if00-port0"));
        let _ = fs::remove_file(&by_id);
        let name = slave.file_name().expect("pts name").to_string_lossy();
        symlink(format!("../../pts/{name}"), &by_id)
            .unwrap_or_else(|e| panic!("e2e: symlink {}: {e}", by_id.display()));
        PtySerial {
            master: master.into(),
            _slave: slave_fd,
            slave,
            by_id,
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        }
    }

    /// Reads what arrived on the master until `want` is contained in it or
    /// `timeout` passes; returns everything read.
    pub fn read_until(&self, want: &[u8], timeout: Duration) -> Vec<u8> {
        let start = Instant::now();
        let mut got = Vec::new();
        while !contains(&got, want) {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => break,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => panic!("e2e: poll pty master: {e}"),
            }
            let mut buf = [0u8; 4096];
            match nix::unistd::read(self.master.as_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(e) => panic!("e2e: read pty master: {e}"),
            }
        }
        got
    }

    /// Writes bytes the container can read from the slave.
    pub fn write(&self, bytes: &[u8]) {
        let mut f = File::from(
            self.master
                .try_clone()
                .unwrap_or_else(|e| panic!("e2e: dup pty master: {e}")),
        );
        f.write_all(bytes)
            .unwrap_or_else(|e| panic!("e2e: write pty master: {e}"));
    }

    pub fn master_fd(&self) -> i32 {
        self.master.as_raw_fd()
    }

    /// Unplugs the stick as udev shows it: the by-id link goes (the bed
    /// keeps the pty itself).
    pub fn unplug(&self) {
        fs::remove_file(&self.by_id)
            .unwrap_or_else(|e| panic!("e2e: unplug {}: {e}", self.by_id.display()));
    }

    /// Plugs it back in: the by-id link returns.
    pub fn replug(&self) {
        let name = self.slave.file_name().expect("pts name").to_string_lossy();
        symlink(format!("../../pts/{name}"), &self.by_id)
            .unwrap_or_else(|e| panic!("e2e: replug {}: {e}", self.by_id.display()));
    }
}

impl Drop for PtySerial {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.by_id);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// A char node made with mknod under [`NODE_DIR`], e.g. `dri/renderD128`
/// with numbers of a harmless device such as 1:3.
#[derive(Debug)]
pub struct CharNode {
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
    gid: u32,
    mode: u32,
}

impl CharNode {
    pub(crate) fn create(name: &str, major: u32, minor: u32, gid: u32, mode: u32) -> CharNode {
        assert!(
            !name.starts_with('/')
                && !name
                    .split('/')
                    .any(|c| c == ".." || c == "." || c.is_empty()),
            "e2e: char_node name must be relative and plain: {name:?}"
        );
        let path = Path::new(NODE_DIR).join(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("e2e: {}: {e}", dir.display()));
        }
        let _ = fs::remove_file(&path);
        let dev = libc::makedev(major, minor);
        mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), dev)
            .unwrap_or_else(|e| panic!("e2e: mknod {}: {e}", path.display()));
        std::os::unix::fs::chown(&path, Some(0), Some(gid))
            .unwrap_or_else(|e| panic!("e2e: chown {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("e2e: chmod {}: {e}", path.display()));
        let meta = fs::metadata(&path).expect("node just made");
        assert!(meta.file_type().is_char_device());
        CharNode {
            path,
            major,
            minor,
            gid,
            mode,
        }
    }

    /// Unplugs it: the node goes.
    pub fn unplug(&self) {
        fs::remove_file(&self.path)
            .unwrap_or_else(|e| panic!("e2e: unplug {}: {e}", self.path.display()));
    }

    /// Plugs it back in: the same node, owner and mode.
    pub fn replug(&self) {
        let name = self
            .path
            .strip_prefix(NODE_DIR)
            .expect("under NODE_DIR")
            .to_string_lossy()
            .into_owned();
        let again = CharNode::create(&name, self.major, self.minor, self.gid, self.mode);
        std::mem::forget(again);
    }
}

impl Drop for CharNode {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Removes every stand-in a crashed run may have left.
pub(crate) fn clean_leftovers() {
    if let Ok(rd) = fs::read_dir(BY_ID_DIR) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(BY_ID_PREFIX) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let _ = fs::remove_dir_all(NODE_DIR);
}
