//! Device nodes named in a config, looked up under the root: symlinks (udev's
//! relative by-id links and absolute ones) resolve as if the root were `/`.
//! Also the by-id links of a node and a serial adapter's USB attributes from
//! sysfs (never prefixed).

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::model::doctor::UsbAttrs;
use crate::paths::Paths;

/// Symlink hops followed before giving up, as the kernel's ELOOP limit.
const MAX_HOPS: usize = 40;

/// A resolved node: its path as seen from the root (`/dev/ttyUSB0`) and
/// its metadata. `Ok(None)` when it, or a link on the way, is missing.
/// The kernel resolves it inside the root (one `O_PATH` open, never the
/// device's driver) and names what it found through `/proc/self/fd`; where
/// that name is not under the root as given, the links are walked by hand.
pub fn resolve(paths: &Paths, abs: &str) -> io::Result<Option<(String, Metadata)>> {
    use nix::fcntl::OFlag;
    use std::os::fd::AsRawFd;
    let host = paths.host(abs);
    let file = crate::sys::fs::open_host(
        paths,
        &host,
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| match e.downcast::<io::Error>() {
        Ok(io) if io.raw_os_error() == Some(libc::ELOOP) => {
            io::Error::other(format!("{abs}: too many levels of symbolic links"))
        }
        Ok(io) => io,
        Err(e) => io::Error::other(format!("{e:#}")),
    })?;
    let Some(file) = file else {
        return Ok(None);
    };
    let meta = file.metadata()?;
    let seen = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
        .and_then(|real| as_seen_from_root(paths, &real));
    match seen {
        Some(seen) => Ok(Some((seen, meta))),
        None => resolve_by_walk(paths, abs),
    }
}

/// `real` (a host path from `/proc`) as seen from the root: `/dev/ttyUSB0`.
fn as_seen_from_root(paths: &Paths, real: &Path) -> Option<String> {
    let rel = real.strip_prefix(paths.root()).ok()?;
    let seen = Path::new("/").join(rel);
    // A name the kernel marks unreachable or deleted is no path.
    let text = seen.to_str()?;
    (!text.ends_with(" (deleted)")).then(|| text.to_string())
}

/// [`resolve`] by walking each component and link under the root.
fn resolve_by_walk(paths: &Paths, abs: &str) -> io::Result<Option<(String, Metadata)>> {
    let mut todo: Vec<PathBuf> = vec![PathBuf::from(abs)];
    let mut done = PathBuf::from("/");
    let mut hops = 0;
    while let Some(next) = todo.pop() {
        // Walk `next` component by component, re-rooting absolute links.
        let mut comps: Vec<Component> = next.components().collect();
        comps.reverse();
        while let Some(c) = comps.pop() {
            match c {
                Component::RootDir => done = PathBuf::from("/"),
                Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    done.pop();
                }
                Component::Normal(name) => {
                    let candidate = done.join(name);
                    let host = paths.host(&candidate);
                    let meta = match fs::symlink_metadata(&host) {
                        Ok(m) => m,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(e),
                    };
                    if meta.file_type().is_symlink() {
                        hops += 1;
                        if hops > MAX_HOPS {
                            return Err(io::Error::other(format!(
                                "{abs}: too many levels of symbolic links"
                            )));
                        }
                        let target = fs::read_link(&host)?;
                        // The rest of this path comes after the link's target.
                        let rest: PathBuf = comps.iter().rev().collect();
                        let joined = if target.is_absolute() {
                            target.join(rest)
                        } else {
                            done.join(target).join(rest)
                        };
                        // `joined` is absolute: it restarts the walk.
                        todo.push(joined);
                        comps.clear();
                    } else {
                        done = candidate;
                    }
                }
            }
        }
    }
    let meta = fs::metadata(paths.host(&done))?;
    Ok(Some((done.display().to_string(), meta)))
}

/// `/dev/serial/by-id/*` links that resolve to the same node as `node`.
pub fn by_id_links(paths: &Paths, node: &Metadata) -> Vec<String> {
    let dir = paths.host("/dev/serial/by-id");
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = format!("/dev/serial/by-id/{}", e.file_name().to_string_lossy());
            let (_, m) = resolve(paths, &name).ok()??;
            (m.dev() == node.dev() && m.ino() == node.ino() || same_rdev(&m, node)).then_some(name)
        })
        .collect();
    out.sort();
    out
}

fn same_rdev(a: &Metadata, b: &Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    a.file_type().is_char_device() && b.file_type().is_char_device() && a.rdev() == b.rdev()
}

/// `idVendor`, `idProduct` and `serial` of the USB device behind a tty, from
/// `/sys/class/tty/<name>/device` and its parents.
pub fn usb_attrs(node: &str) -> Option<UsbAttrs> {
    let name = Path::new(node).file_name()?.to_str()?;
    let mut dir = fs::canonicalize(format!("/sys/class/tty/{name}/device")).ok()?;
    for _ in 0..8 {
        let read = |f: &str| {
            fs::read_to_string(dir.join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        if let (Some(vendor), Some(product)) = (read("idVendor"), read("idProduct")) {
            return Some(UsbAttrs {
                vendor,
                product,
                serial: read("serial"),
            });
        }
        if !dir.pop() {
            break;
        }
    }
    None
}

/// Resolves `abs` and stats the node: `Ok(None)` when it is missing.
pub fn node(paths: &Paths, abs: &str) -> io::Result<Option<crate::model::device::Node>> {
    use crate::model::device::{Node, NodeKind};
    use std::os::unix::fs::FileTypeExt;
    let Some((resolved, meta)) = resolve(paths, abs)? else {
        return Ok(None);
    };
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        NodeKind::Char
    } else if ft.is_block_device() {
        NodeKind::Block
    } else {
        NodeKind::NotDevice
    };
    let rdev = meta.rdev();
    Ok(Some(Node {
        resolved,
        kind,
        major: libc::major(rdev),
        minor: libc::minor(rdev),
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A by-id link goes through `..`: renames elsewhere on the filesystem
    /// (other starts replacing their files) make the kernel's in-root
    /// lookup say `EAGAIN`, which must be tried again, never reported.
    #[test]
    fn resolves_through_dotdot_while_files_are_renamed() {
        let d = tempfile::tempdir().unwrap();
        let p = Paths::with_root(d.path());
        fs::create_dir_all(d.path().join("dev/serial/by-id")).unwrap();
        fs::write(d.path().join("dev/ttyUSB0"), "").unwrap();
        symlink("../../ttyUSB0", d.path().join("dev/serial/by-id/usb-a")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renamer = {
            let (stop, dir) = (stop.clone(), d.path().join("etc"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("a"), "").unwrap();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    fs::rename(dir.join("a"), dir.join("b")).unwrap();
                    fs::rename(dir.join("b"), dir.join("a")).unwrap();
                }
            })
        };
        let failed = (0..20_000)
            .filter(|_| !matches!(resolve(&p, "/dev/serial/by-id/usb-a"), Ok(Some((n, _))) if n == "/dev/ttyUSB0"))
            .count();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        renamer.join().unwrap();
        assert_eq!(failed, 0, "lookups that failed while files were renamed");
    }

    #[test]
    fn resolves_relative_and_absolute_links_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let p = Paths::with_root(d.path());
        fs::create_dir_all(d.path().join("dev/serial/by-id")).unwrap();
        fs::write(d.path().join("dev/ttyUSB0"), "").unwrap();
        symlink("../../ttyUSB0", d.path().join("dev/serial/by-id/usb-a")).unwrap();
        symlink("/dev/ttyUSB0", d.path().join("dev/serial/by-id/usb-b")).unwrap();
        symlink("/dev/serial/by-id/usb-a", d.path().join("dev/zigbee")).unwrap();
        for name in [
            "/dev/serial/by-id/usb-a",
            "/dev/serial/by-id/usb-b",
            "/dev/zigbee",
            "/dev/ttyUSB0",
        ] {
            let (node, _) = resolve(&p, name)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}"));
            assert_eq!(node, "/dev/ttyUSB0", "{name}");
        }
        assert!(resolve(&p, "/dev/ttyUSB9").unwrap().is_none());
        symlink("loop", d.path().join("dev/loop")).unwrap();
        assert!(resolve(&p, "/dev/loop").is_err());
        let (_, m) = resolve(&p, "/dev/ttyUSB0").unwrap().unwrap();
        assert_eq!(
            by_id_links(&p, &m),
            ["/dev/serial/by-id/usb-a", "/dev/serial/by-id/usb-b"]
        );
    }
}

/// A private node to keep in a directory: file name, device numbers,
/// host owner and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub major: u32,
    pub minor: u32,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Makes `dir` (under the root, created 0755) hold exactly `nodes` as char
/// devices with their owner and mode: a node that differs is replaced
/// (made under a temp name, then renamed over), any other entry removed.
/// A missing `dir` with no nodes wanted is left missing. Returns what
/// changed, one line each.
pub fn sync_private_nodes(
    paths: &Paths,
    dir: &str,
    nodes: &[NodeSpec],
) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    use nix::fcntl::{open, renameat, AtFlags, OFlag};
    use nix::sys::stat::{fchmodat, fstatat, makedev, mknodat, FchmodatFlags, Mode, SFlag};
    use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
    let host_dir = paths.host(dir);
    if nodes.is_empty() && !host_dir.exists() {
        return Ok(Vec::new());
    }
    crate::sys::fs::create_dir_all(paths, &host_dir)?;
    let fd = open(
        &host_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("{}: cannot open", host_dir.display()))?;
    let mut done = Vec::new();
    for n in nodes {
        let dev = makedev(u64::from(n.major), u64::from(n.minor));
        let same = fstatat(&fd, n.name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|st| {
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR
                && st.st_rdev == dev
                && st.st_uid == n.uid
                && st.st_gid == n.gid
                && st.st_mode & 0o7777 == n.mode
        });
        if same {
            continue;
        }
        let tmp = format!(".{}.tmp.{}", n.name, std::process::id());
        let _ = unlinkat(&fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        let made = mknodat(
            &fd,
            tmp.as_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0),
            dev,
        )
        .and_then(|()| {
            fchownat(
                &fd,
                tmp.as_str(),
                Some(Uid::from_raw(n.uid)),
                Some(Gid::from_raw(n.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
        })
        .and_then(|()| {
            fchmodat(
                &fd,
                tmp.as_str(),
                Mode::from_bits_truncate(n.mode),
                FchmodatFlags::FollowSymlink,
            )
        })
        .and_then(|()| renameat(&fd, tmp.as_str(), &fd, n.name));
        if let Err(e) = made {
            let _ = unlinkat(&fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(anyhow::Error::new(e))
                .with_context(|| format!("{dir}/{}: cannot make the private node", n.name));
        }
        done.push(format!(
            "{dir}/{} c {}:{} {}:{} {:o}",
            n.name, n.major, n.minor, n.uid, n.gid, n.mode
        ));
    }
    for entry in
        fs::read_dir(&host_dir).with_context(|| format!("{}: cannot list", host_dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        if nodes.iter().any(|n| std::ffi::OsStr::new(n.name) == name) {
            continue;
        }
        unlinkat(&fd, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
            .with_context(|| format!("{dir}/{}: cannot remove", name.to_string_lossy()))?;
        done.push(format!("removed {dir}/{}", name.to_string_lossy()));
    }
    Ok(done)
}
