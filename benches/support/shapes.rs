//! Host roots for the benchmark shapes and the I/O regression tests: nothing
//! to do, typical (one serial stick bound by its by-id path: GID 20 and a
//! subgid append) and large (1,000-line config, 10,000 subid lines, 300
//! policy passthroughs). Shared by `benches/process.rs` and `tests/io_budget.rs`.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const VMID: &str = "105";

/// The sample host of the README's demo: zigbee2mqtt in container 105.
pub fn sample_host() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sample-host")
}

pub const STICK: &str =
    "/dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0_USB_Dongle_Plus_4c004e9c53c9ec118f6c5b3d-if00-port0";

/// A fresh copy of `template` at `root`, flushed to disk (untimed): on a
/// host the files are not freshly written, and writeback of the copy would
/// otherwise land in a timed run.
pub fn fresh_copy(template: &Path, root: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    copy_tree(template, root)?;
    let dir = fs::File::open(root)?;
    // SAFETY: `dir` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies a tree: directories, regular files (mode kept), symlinks and
/// character devices (`mknod`, needs root).
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        fs::create_dir_all(to)?;
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        for e in fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
    } else if ft.is_symlink() {
        symlink(fs::read_link(from)?, to)?;
    } else if ft.is_char_device() {
        mknod_char(
            to,
            meta.rdev(),
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid(),
        )?;
    } else {
        fs::copy(from, to)?;
    }
    Ok(())
}

/// Makes a character device node with owner and mode.
pub fn mknod_char(path: &Path, rdev: u64, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(mode),
        rdev as nix::libc::dev_t,
    )
    .map_err(|e| {
        io::Error::other(format!(
            "mknod {}: {e} (the benchmark shapes need root)",
            path.display()
        ))
    })?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn write(root: &Path, abs: &str, text: &str) -> io::Result<()> {
    let p = root.join(abs.trim_start_matches('/'));
    fs::create_dir_all(p.parent().expect("a parent"))?;
    fs::write(p, text)
}

fn read(root: &Path, abs: &str) -> io::Result<String> {
    fs::read_to_string(root.join(abs.trim_start_matches('/')))
}

/// The stick's host node as udev makes it: `c 188:0`, root:dialout, 0660.
fn add_stick_node(root: &Path) -> io::Result<()> {
    mknod_char(
        &root.join("dev/ttyUSB0"),
        nix::sys::stat::makedev(188, 0),
        0o660,
        0,
        20,
    )
}

/// Typical: the sample host with its stick. The config binds the stick by
/// its by-id path; the tool passes GID 20 through and appends `root:20:1` to
/// `/etc/subgid`. The host is an installed one (`install.sh` keeps its
/// manifest in `/var/lib/pct-passthrough`) with the `/run/lock` every host
/// has, and this is the first start since boot of a container the tool has
/// never run for: no `/run/lock/pct-passthrough`, no
/// `/etc/pve/pct-passthrough`, no state.
pub fn typical(root: &Path) -> io::Result<()> {
    copy_tree(&sample_host(), root)?;
    fs::create_dir_all(root.join("run/lock"))?;
    fs::create_dir_all(root.join("var/lib/pct-passthrough/install"))?;
    add_stick_node(root)
}

/// Typical, the GUI's way: the stick as `dev0:` by its by-id path instead
/// of a bind (the tool gives the node GID 20; no map, no subgid edit).
pub fn typical_devn(root: &Path) -> io::Result<()> {
    typical(root)?;
    let conf = read(root, "/etc/pve/lxc/105.conf")?;
    let conf: String = conf
        .split_inclusive('\n')
        .map(|l| match l.strip_prefix("lxc.mount.entry: ") {
            Some(entry) => format!("dev0: {}\n", entry.split(' ').next().unwrap_or_default()),
            None => l.to_string(),
        })
        .collect();
    write(root, "/etc/pve/lxc/105.conf", &conf)?;
    let lxc = read(root, "/var/lib/lxc/105/config")?;
    let kept: String = lxc
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("lxc.mount.entry"))
        .collect();
    write(root, "/var/lib/lxc/105/config", &kept)
}

/// Nothing to do: the sample host's container without the stick's bind.
pub fn nothing(root: &Path) -> io::Result<()> {
    typical(root)?;
    let conf = read(root, "/etc/pve/lxc/105.conf")?;
    let kept: String = conf
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("lxc.mount.entry:"))
        .collect();
    write(root, "/etc/pve/lxc/105.conf", &kept)?;
    let lxc = read(root, "/var/lib/lxc/105/config")?;
    let kept: String = lxc
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("lxc.mount.entry"))
        .collect();
    write(root, "/var/lib/lxc/105/config", &kept)
}

/// Nothing to do, with the large shape's 1,000-line config (snapshots and
/// pending section) and 10,000-line subid files.
pub fn nothing_large(root: &Path) -> io::Result<()> {
    nothing(root)?;
    let main = read(root, "/etc/pve/lxc/105.conf")?;
    write(
        root,
        "/etc/pve/lxc/105.conf",
        &config_of_lines(&main, LARGE_CONFIG_LINES),
    )?;
    let subid = large_subid(LARGE_SUBID_LINES);
    write(root, "/etc/subuid", &subid)?;
    write(root, "/etc/subgid", &subid)
}

/// Lines of the large config, subid files and policy.
pub const LARGE_CONFIG_LINES: usize = 1000;
pub const LARGE_SUBID_LINES: usize = 10_000;
pub const LARGE_PASSTHROUGHS: usize = 300;

/// Large: the typical host, with a 1,000-line config (the main section plus
/// snapshot sections and `[pve:pending]`), 10,000 lines in each subid file
/// and 300 passthroughs from policy `idmap` lines (150 uids and 150 gids,
/// none adjacent, so the map stays under LXC's limit of lines).
pub fn large(root: &Path) -> io::Result<()> {
    typical(root)?;
    let main = read(root, "/etc/pve/lxc/105.conf")?;
    write(
        root,
        "/etc/pve/lxc/105.conf",
        &config_of_lines(&main, LARGE_CONFIG_LINES),
    )?;
    let subid = large_subid(LARGE_SUBID_LINES);
    write(root, "/etc/subuid", &subid)?;
    write(root, "/etc/subgid", &subid)?;
    write(
        root,
        "/etc/pve/pct-passthrough/105.toml",
        &policy_idmap(LARGE_PASSTHROUGHS),
    )
}

/// `main` followed by snapshot sections (copies of its body) and a pending
/// section, to exactly `lines` lines; below the main section's length, its
/// first `lines` lines.
pub fn config_of_lines(main: &str, lines: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    for l in main.split_inclusive('\n').take(lines) {
        out.push_str(l);
        count += 1;
    }
    let body: Vec<&str> = main
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    const PENDING: &str = "\n[pve:pending]\nmemory: 1024\n";
    let mut snap = 0;
    // A snapshot: a blank line, a header, its body and `snaptime:`.
    while count + 3 + 4 <= lines {
        let take = (lines - count - 3 - 3).min(body.len());
        let _ = write!(out, "\n[snap{snap}]\n");
        for l in &body[..take] {
            out.push_str(l);
            out.push('\n');
        }
        let _ = writeln!(out, "snaptime: {}", 1_731_000_000 + snap);
        count += 3 + take;
        snap += 1;
    }
    if count + 3 <= lines {
        out.push_str(PENDING);
        count += 3;
    }
    while count < lines {
        out.push_str("swap: 0\n");
        count += 1;
    }
    out
}

/// A subid file of `lines` lines: root's PVE range first, then other
/// owners' disjoint ranges above it.
pub fn large_subid(lines: usize) -> String {
    let mut out = String::from("root:100000:65536\n");
    for i in 1..lines as u64 {
        let _ = writeln!(out, "user{i}:{}:65536", 165_536 + i * 65_536);
    }
    out
}

/// A policy with `n` passthroughs: alternately `uid` and `gid` lines, host
/// IDs 1000, 1002, ... (never adjacent, so none merge).
pub fn policy_idmap(n: usize) -> String {
    let mut out = String::from("idmap = [\n");
    for i in 0..n {
        let id = 1000 + 2 * (i / 2);
        let kind = if i % 2 == 0 { "uid" } else { "gid" };
        let _ = writeln!(out, "  \"{kind} {id} {id}\",");
    }
    out.push_str("]\n");
    out
}

/// The host ID of the `i`-th of [`clumped_ids`]: clumps of 10 adjacent IDs,
/// 10 apart, alternately uids and gids. 1,000 of them make 50 passthrough
/// lines per kind, well inside LXC's 340-line limit.
pub fn clumped_id(i: usize) -> (&'static str, u64) {
    let clump = (i / 10) as u64;
    let kind = if clump.is_multiple_of(2) {
        "uid"
    } else {
        "gid"
    };
    (kind, 1000 + clump * 20 + (i % 10) as u64)
}

/// A policy with `n` one-ID passthroughs from [`clumped_id`].
pub fn policy_idmap_clumped(n: usize) -> String {
    let mut out = String::from("idmap = [\n");
    for i in 0..n {
        let (kind, id) = clumped_id(i);
        let _ = writeln!(out, "  \"{kind} {id} {id}\",");
    }
    out.push_str("]\n");
    out
}

/// A container `/etc/group` of `lines` lines (Debian's first groups, then
/// service groups with a member each), without GID 20.
pub fn group_file(lines: usize) -> String {
    let mut out: String = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\n"
        .split_inclusive('\n')
        .take(lines)
        .collect();
    for i in 4..lines {
        let _ = writeln!(out, "svc{i}:x:{}:user{i}", 1000 + i);
    }
    out
}

/// Every regular file under `root` with its bytes, sorted by path: compare
/// two of these to see what a run changed.
pub fn files(root: &Path) -> io::Result<Vec<(PathBuf, Vec<u8>)>> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) -> io::Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                walk(&e.path(), root, out)?;
            } else if ft.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .expect("under root")
                    .to_path_buf();
                out.push((rel, fs::read(e.path())?));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// Paths (relative to the root) whose bytes differ, or that exist on one
/// side only.
pub fn changed(before: &[(PathBuf, Vec<u8>)], after: &[(PathBuf, Vec<u8>)]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for (p, b) in before {
        match after.iter().find(|(q, _)| q == p) {
            Some((_, a)) if a == b => {}
            _ => out.push(p.clone()),
        }
    }
    for (p, _) in after {
        if !before.iter().any(|(q, _)| q == p) {
            out.push(p.clone());
        }
    }
    out.sort();
    out
}

/// One container of [`many`]: its VMID and what its start needs covered
/// in `/etc/subuid` and `/etc/subgid`.
#[derive(Debug, Clone)]
pub struct ManyCt {
    pub vmid: u32,
    /// The stick's group on the host.
    pub gid: u32,
    /// A policy `idmap` uid, for some: a subuid append.
    pub uid: Option<u32>,
}

/// The first VMID of [`many`].
pub const MANY_FIRST_VMID: u32 = 200;
/// A group `/etc/subgid` already gives root in [`many`]: no append.
pub const MANY_COVERED_GID: u32 = 44;

/// What [`many`] puts in the subid files before any start.
pub const MANY_SUBUID: &str = "root:100000:65536\nuser1:165536:65536\n";
pub const MANY_SUBGID: &str = "root:100000:65536\nuser1:165536:65536\nroot:44:1\n";

/// The containers [`many`] makes: container `i` binds its own stick (its
/// own by-id link and node `c 188:i`) whose group is, by `i % 4`: GID 20
/// (dialout: one append all of them race for), a GID of its own (an append
/// each), GID 44 (already covered: none), GID 27 (one shared append). Every
/// eighth also has a policy `idmap` uid of its own (a subuid append).
pub fn many_cts(n: usize) -> Vec<ManyCt> {
    (0..n as u32)
        .map(|i| ManyCt {
            vmid: MANY_FIRST_VMID + i,
            gid: match i % 4 {
                0 => 20,
                1 => 5000 + i,
                2 => MANY_COVERED_GID,
                _ => 27,
            },
            uid: (i % 8 == 7).then_some(6000 + i),
        })
        .collect()
}

/// `n` containers on one host, each with one stick: see [`many_cts`].
pub fn many(root: &Path, n: usize) -> io::Result<Vec<ManyCt>> {
    let cts = many_cts(n);
    let sample = sample_host();
    let conf = fs::read_to_string(sample.join("etc/pve/lxc/105.conf"))?;
    let lxc = fs::read_to_string(sample.join("var/lib/lxc/105/config"))?;
    write(root, "/etc/subuid", MANY_SUBUID)?;
    write(root, "/etc/subgid", MANY_SUBGID)?;
    fs::create_dir_all(root.join("dev/serial/by-id"))?;
    for (i, ct) in cts.iter().enumerate() {
        let node = format!("ttyUSB{i}");
        let link = format!("/dev/serial/by-id/usb-Bench_Stick_{i:02}-if00-port0");
        mknod_char(
            &root.join("dev").join(&node),
            nix::sys::stat::makedev(188, i as u64),
            0o660,
            0,
            ct.gid,
        )?;
        symlink(
            format!("../../{node}"),
            root.join(link.trim_start_matches('/')),
        )?;
        let vmid = ct.vmid.to_string();
        let swap = |text: &str| text.replace(STICK, &link).replace("105", &vmid);
        write(root, &format!("/etc/pve/lxc/{vmid}.conf"), &swap(&conf))?;
        write(root, &format!("/var/lib/lxc/{vmid}/config"), &swap(&lxc))?;
        if let Some(uid) = ct.uid {
            write(
                root,
                &format!("/etc/pve/pct-passthrough/{vmid}.toml"),
                &format!("idmap = [\"uid {uid} {uid}\"]\n"),
            )?;
        }
    }
    Ok(cts)
}

/// Checks `/etc/subuid` and `/etc/subgid` under `root` after the starts of
/// `cts`: every line well-formed (`name:start:count`, newline-terminated),
/// the lines [`many`] put there kept in order at the top, no line twice,
/// and every host ID a container needs given to root by exactly one line.
pub fn check_many_subids(root: &Path, cts: &[ManyCt]) -> Result<(), String> {
    let mut gids: Vec<u32> = cts.iter().map(|c| c.gid).collect();
    let mut uids: Vec<u32> = cts.iter().filter_map(|c| c.uid).collect();
    gids.sort_unstable();
    gids.dedup();
    uids.sort_unstable();
    for (file, before, needed) in [
        ("/etc/subuid", MANY_SUBUID, &uids),
        ("/etc/subgid", MANY_SUBGID, &gids),
    ] {
        let text = read(root, file).map_err(|e| format!("{file}: {e}"))?;
        check_subid_text(file, &text, before, needed)?;
    }
    Ok(())
}

/// [`check_many_subids`] for one file's text.
pub fn check_subid_text(
    file: &str,
    text: &str,
    before: &str,
    needed: &[u32],
) -> Result<(), String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(format!("{file}: the last line has no newline"));
    }
    if !text.starts_with(before) {
        return Err(format!(
            "{file}: the lines that were there are not kept at the top:\n{text}"
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut root_ranges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(':').collect();
        let parsed = match fields.as_slice() {
            [name, start, count] if !name.is_empty() => {
                start.parse::<u64>().ok().zip(count.parse::<u64>().ok())
            }
            _ => None,
        };
        let Some((start, count)) = parsed.filter(|&(s, c)| c > 0 && s + c <= 1 << 32) else {
            return Err(format!(
                "{file} line {}: not name:start:count: {line:?}",
                n + 1
            ));
        };
        if !seen.insert(line) {
            return Err(format!("{file} line {}: {line:?} is there twice", n + 1));
        }
        if fields[0] == "root" {
            root_ranges.push((start, start + count));
        }
    }
    for &id in needed {
        let id = u64::from(id);
        let covering = root_ranges
            .iter()
            .filter(|&&(s, e)| s <= id && id < e)
            .count();
        if covering != 1 {
            return Err(format!(
                "{file}: host ID {id} is given to root by {covering} lines, not exactly one:\n{text}"
            ));
        }
    }
    Ok(())
}
