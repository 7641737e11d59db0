//! Regression checks for what keeps pre-start fast (tests, not timings): the
//! real binary runs under strace against a temp root, and the files it
//! opens, writes, renames and removes are compared with what it must touch.
//! Needs root and strace (`scripts/test.sh` installs it).

#[path = "../benches/support/shapes.rs"]
mod shapes;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");

/// Every syscall that opens a path or changes the file tree.
const TRACED: &str = "open,openat,openat2,creat,rename,renameat,renameat2,unlink,unlinkat,\
    mkdir,mkdirat,rmdir,link,linkat,symlink,symlinkat,truncate,chmod,fchmodat,chown,fchownat,\
    lchown,mknod,mknodat,clone,clone3,fork,vfork,fsync,fdatasync,syncfs";

/// The calls that flush a file or directory (named by their descriptor).
const SYNCS: &[&str] = &["fsync", "fdatasync", "syncfs"];

/// Opens the Rust runtime itself makes in every binary (the main thread's
/// stack guard), outside the root.
const RUNTIME_OPENS: &[&str] = &["/proc/self/maps"];

/// One traced call on a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    syscall: String,
    /// Relative to the root as `/etc/...`; absolute if outside it.
    path: String,
    /// Which path argument: 1 is a rename's or link's target.
    arg: usize,
    /// An open's flags (`O_WRONLY|O_CREAT|...`); empty for other calls.
    flags: String,
    /// The call changes the file tree or opens for writing.
    mutates: bool,
}

/// What one traced run did.
struct Trace {
    calls: Vec<Call>,
    status: std::process::ExitStatus,
    stderr: String,
}

impl Trace {
    /// Paths opened (read or write, found or not), deduplicated. An
    /// `O_PATH` open reads nothing: it is the root's descriptor that every
    /// lookup under a temp root starts from.
    fn opened(&self) -> BTreeSet<String> {
        self.calls
            .iter()
            .filter(|c| c.syscall.starts_with("open") || c.syscall == "creat")
            .filter(|c| !c.flags.contains("O_PATH"))
            .map(|c| c.path.clone())
            .filter(|p| !RUNTIME_OPENS.contains(&p.as_str()))
            .collect()
    }

    fn mutations(&self) -> Vec<&Call> {
        self.calls.iter().filter(|c| c.mutates).collect()
    }

    fn mutated_paths(&self) -> BTreeSet<String> {
        self.mutations().iter().map(|c| c.path.clone()).collect()
    }

    /// Files replaced by a rename: the targets.
    fn renamed_to(&self) -> BTreeSet<String> {
        self.calls
            .iter()
            .filter(|c| c.syscall.starts_with("rename") && c.arg == 1)
            .map(|c| c.path.clone())
            .collect()
    }

    /// Processes or threads started.
    fn spawns(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| ["clone", "clone3", "fork", "vfork"].contains(&c.syscall.as_str()))
            .count()
    }

    /// What was flushed, in order, with `.tmp.<pid>` made `.tmp.PID`.
    fn synced(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter(|c| SYNCS.contains(&c.syscall.as_str()))
            .map(|c| match c.path.split_once(".tmp.") {
                Some((name, _)) => format!("{name}.tmp.PID"),
                None => c.path.clone(),
            })
            .collect()
    }

    fn write_opens(&self) -> Vec<&Call> {
        self.calls
            .iter()
            .filter(|c| c.syscall.starts_with("open") && c.mutates)
            .collect()
    }
}

/// The first quoted string of an strace argument list, unescaped enough
/// for paths (strace escapes `"` and `\`).
fn quoted(args: &str) -> Option<(String, &str)> {
    let start = args.find('"')? + 1;
    let mut out = String::new();
    let mut chars = args[start..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?.1),
            '"' => return Some((out, &args[start + i + 1..])),
            _ => out.push(c),
        }
    }
    None
}

/// The path strace `-y` prints for the last descriptor argument in
/// `segment` (`3</r/etc>`), if any.
fn fd_path(segment: &str) -> Option<&str> {
    let open = segment.rfind("</")?;
    let rest = &segment[open + 1..];
    Some(&rest[..rest.find('>')?])
}

/// The calls of an strace `-y` log, paths made relative to `root_s`. A
/// path relative to a directory descriptor is joined to that directory.
fn parse_log(text: &str, root_s: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    for line in text.lines() {
        // `PID name(args) = result`, or `PID name(args <unfinished ...>`.
        let line = line
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        if line.starts_with("<...") || line.starts_with("+++") || line.starts_with("---") {
            continue;
        }
        let Some((syscall, args)) = line.split_once('(') else {
            continue;
        };
        if ["clone", "clone3", "fork", "vfork"].contains(&syscall) {
            calls.push(Call {
                syscall: syscall.to_string(),
                path: String::new(),
                arg: 0,
                flags: String::new(),
                mutates: false,
            });
            continue;
        }
        let rel_to_root = |path: &str| match path.strip_prefix(root_s) {
            Some("") => "/".to_string(),
            Some(r) => r.to_string(),
            None => path.to_string(),
        };
        if SYNCS.contains(&syscall) {
            calls.push(Call {
                syscall: syscall.to_string(),
                path: fd_path(args).map(rel_to_root).unwrap_or_default(),
                arg: 0,
                flags: String::new(),
                mutates: false,
            });
            continue;
        }
        let mut rest = args;
        // rename and link calls name two paths; both count.
        let mut arg = 0;
        while let Some((path, tail)) = quoted(rest) {
            let before = &rest[..rest.find('"').unwrap_or(0)];
            let path = match fd_path(before) {
                Some(dir) if !path.starts_with('/') => {
                    if path == "." {
                        dir.to_string()
                    } else {
                        format!("{}/{path}", dir.trim_end_matches('/'))
                    }
                }
                _ => path,
            };
            let rel = match path.strip_prefix(root_s) {
                Some("") => "/".to_string(),
                Some(r) => r.to_string(),
                None => path.clone(),
            };
            let flags = tail.split(')').next().unwrap_or("");
            let writes_open = ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"]
                .iter()
                .any(|f| flags.contains(f));
            let mutates = if syscall.starts_with("open") {
                writes_open
            } else {
                true
            };
            let is_open = syscall.starts_with("open") || syscall == "creat";
            calls.push(Call {
                syscall: syscall.to_string(),
                path: rel,
                arg,
                flags: if is_open {
                    flags.trim_start_matches([',', ' ']).to_string()
                } else {
                    String::new()
                },
                mutates,
            });
            arg += 1;
            rest = tail;
            if syscall.starts_with("open") {
                break;
            }
        }
    }
    calls
}

/// Runs the binary under strace with `PCT_PASSTHROUGH_ROOT=root`.
fn trace(root: &Path, args: &[&str]) -> Trace {
    let log = tempfile::NamedTempFile::new().expect("temp file");
    let out = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-qq",
            "-s",
            "4096",
            "-e",
            &format!("trace={TRACED}"),
            "-o",
        ])
        .arg(log.path())
        .arg(BIN)
        .args(args)
        .env("PCT_PASSTHROUGH_ROOT", root)
        .output()
        .unwrap_or_else(|e| {
            panic!("running strace: {e}; install it (scripts/test.sh does: apt-get install strace)")
        });
    let text = std::fs::read_to_string(log.path()).expect("strace log");
    assert!(
        !text.is_empty(),
        "strace wrote nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = parse_log(&text, root.to_str().expect("utf-8 temp path"));
    Trace {
        calls,
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn root_with(build: fn(&Path) -> std::io::Result<()>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    build(&dir.path().join("r")).expect("build the shape (needs root)");
    dir
}

#[test]
fn nothing_to_do_opens_only_config_policy_and_state_and_writes_nothing() {
    for build in [shapes::nothing, shapes::nothing_large] {
        nothing_to_do(build);
    }
}

fn nothing_to_do(build: fn(&Path) -> std::io::Result<()>) {
    let dir = root_with(build);
    let root = dir.path().join("r");
    let t = trace(&root, &[shapes::VMID, "pre-start"]);
    assert!(t.status.success(), "{}", t.stderr);
    assert_eq!(t.stderr, "", "a container with nothing to do is silent");
    assert_eq!(
        t.opened(),
        set(&[
            "/etc/pve/lxc/105.conf",
            "/etc/pve/pct-passthrough/105.toml",
            "/etc/pve/pct-passthrough/105.state.json",
            "/var/lib/pct-passthrough/105.json",
        ]),
        "nothing to do: read the config, look for a policy and the two state files, nothing else"
    );
    assert_eq!(t.mutations(), Vec::<&Call>::new());
    assert_eq!(t.spawns(), 0);
}

/// The other phases with nothing to act on read what they must, start no
/// worker and write nothing.
#[test]
fn other_phases_with_nothing_to_do_only_read() {
    let dir = root_with(shapes::nothing);
    let root = dir.path().join("r");
    for (phase, opens) in [
        (
            "post-start",
            &["/etc/pve/lxc/105.conf", "/etc/pve/pct-passthrough/105.toml"][..],
        ),
        ("pre-stop", &["/etc/pve/pct-passthrough/105.toml"][..]),
        (
            "post-stop",
            &[
                "/etc/pve/lxc/105.conf",
                "/etc/pve/pct-passthrough/105.toml",
                "/etc/pve/pct-passthrough/105.state.json",
                "/var/lib/pct-passthrough/105.json",
            ][..],
        ),
    ] {
        let t = trace(&root, &[shapes::VMID, phase]);
        assert!(t.status.success(), "{phase}: {}", t.stderr);
        assert_eq!(t.stderr, "", "{phase} is silent");
        assert_eq!(t.opened(), set(opens), "{phase}");
        assert_eq!(t.mutations(), Vec::<&Call>::new(), "{phase}");
        assert_eq!(t.spawns(), 0, "{phase} starts no worker");
    }
}

#[test]
fn typical_first_start_replaces_exactly_its_files_and_never_truncates() {
    let dir = root_with(shapes::typical);
    let root = dir.path().join("r");
    let t = trace(&root, &[shapes::VMID, "pre-start"]);
    assert!(t.status.success(), "{}", t.stderr);
    assert_eq!(
        t.renamed_to(),
        set(&[
            "/etc/pve/lxc/105.conf",
            "/etc/pve/pct-passthrough/105.state.json",
            "/etc/subgid",
            "/etc/subgid-",
            "/var/lib/lxc/105/config",
            "/var/lib/pct-passthrough/105.json",
        ]),
        "GID 20 for the stick: the config, subgid and its backup, this start's LXC \
         config and the state (both parts) are replaced, nothing else"
    );
    for c in t.write_opens() {
        assert!(!c.flags.contains("O_TRUNC"), "{c:?} truncates in place");
        assert!(
            c.path.ends_with(".lock") || c.flags.contains("O_EXCL"),
            "{c:?}: a write open that is neither a lock nor a new temp file"
        );
    }
    let subuid: Vec<&Call> = t
        .mutations()
        .into_iter()
        .filter(|c| c.path.starts_with("/etc/subuid"))
        .collect();
    assert_eq!(subuid, Vec::<&Call>::new(), "only a gid passes through");
}

/// `--dry-run`, `plan`, `status` and `doctor` (which may exit 1 with its
/// findings) read only, on hosts where pre-start would write.
#[test]
fn read_only_commands_write_nothing() {
    let commands: [&[&str]; 5] = [
        &["--phase", "pre-start", shapes::VMID, "--dry-run"],
        &["plan", shapes::VMID],
        &["status", shapes::VMID],
        &["status", shapes::VMID, "--json"],
        &["doctor", shapes::VMID],
    ];
    // The large shape in a debug build is slow: the planning commands only.
    for (build, commands) in [
        (shapes::typical as fn(&Path) -> _, &commands[..]),
        (shapes::large, &commands[..2]),
    ] {
        let dir = root_with(build);
        let root = dir.path().join("r");
        let before = shapes::files(&root).unwrap();
        for &args in commands {
            let t = trace(&root, args);
            let code = t.status.code();
            assert!(
                code == Some(0) || (args[0] == "doctor" && code == Some(1)),
                "{args:?}: {:?} {}",
                t.status,
                t.stderr
            );
            assert_eq!(t.mutations(), Vec::<&Call>::new(), "{args:?}: {}", t.stderr);
        }
        assert_eq!(
            shapes::changed(&before, &shapes::files(&root).unwrap()),
            Vec::<std::path::PathBuf>::new()
        );
    }
}

#[test]
fn second_start_writes_nothing() {
    for build in [
        shapes::nothing,
        shapes::typical,
        shapes::typical_devn,
        shapes::large,
    ] {
        let dir = root_with(build);
        let root = dir.path().join("r");
        let first = trace(&root, &[shapes::VMID, "pre-start"]);
        assert!(first.status.success(), "{}", first.stderr);
        let before = shapes::files(&root).unwrap();
        let t = trace(&root, &[shapes::VMID, "pre-start"]);
        assert!(t.status.success(), "{}", t.stderr);
        assert_eq!(
            t.mutated_paths(),
            BTreeSet::new(),
            "the second start changes nothing, so it opens nothing for writing, renames, \
             removes or creates nothing"
        );
        assert_eq!(t.synced(), Vec::<String>::new(), "and flushes nothing");
        assert_eq!(
            shapes::changed(&before, &shapes::files(&root).unwrap()),
            Vec::<std::path::PathBuf>::new()
        );
    }
}

/// The syscalls of a run from its first look at the root (everything
/// before is the Rust and libc runtime, the floor's own) to its exit,
/// without the runtime's teardown and the debug build's descriptor checks
/// (`fcntl F_GETFD` before each close).
fn own_syscalls(root: &Path, args: &[&str]) -> Vec<String> {
    let log = tempfile::NamedTempFile::new().expect("temp file");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(log.path())
        .arg(BIN)
        .args(args)
        .env("PCT_PASSTHROUGH_ROOT", root)
        .output()
        .expect("strace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root_s = root.to_str().expect("utf-8 temp path");
    let text = std::fs::read_to_string(log.path()).expect("strace log");
    let lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.contains(root_s))
        .expect("the root is looked at");
    lines[first..]
        .iter()
        .map(|l| {
            l.trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start()
        })
        .filter(|l| !l.contains("F_GETFD"))
        .filter(|l| {
            !["exit_group(", "sigaltstack(", "munmap(", "+++"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        // Syslog's socket differs between machines (none, or a daemon).
        .filter(|l| {
            !["socket(", "connect(", "sendto(", "sendmsg("]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

/// What each start costs in syscalls, beyond what any process costs: a
/// budget, so an added lookup shows. Nothing to do: the root, the policy,
/// the config (open, fstat, two reads, close) and the state's two files
/// (on `/etc/pve` and node-local); every file under a temp root is looked
/// up from one descriptor of the root. A typical first start writes both
/// state files, the subgid file under shadow's locks, the config and the
/// generated config.
#[test]
fn syscall_budget_per_start() {
    for (build, settle, budget) in [
        (shapes::nothing as fn(&Path) -> _, false, 10),
        (shapes::typical, false, 125),
        (shapes::typical, true, 38),
    ] {
        let dir = root_with(build);
        let root = dir.path().join("r");
        if settle {
            assert!(trace(&root, &[shapes::VMID, "pre-start"]).status.success());
        }
        let calls = own_syscalls(&root, &[shapes::VMID, "pre-start"]);
        let names: Vec<&str> = calls
            .iter()
            .map(|c| c.split('(').next().unwrap_or(""))
            .collect();
        eprintln!("{} syscalls: {names:?}", names.len());
        assert!(
            calls.len() <= budget,
            "{} syscalls, the budget is {budget}: {names:?}",
            calls.len()
        );
        let root_opens = calls
            .iter()
            .filter(|c| c.starts_with(&format!("openat(AT_FDCWD, \"{}\"", root.display())))
            .count();
        assert_eq!(root_opens, 1, "the root is opened once: {calls:#?}");
    }
}

#[test]
fn strace_lines_parse_into_calls() {
    let log = r#"41    openat(AT_FDCWD, "/r/etc/pve/lxc/105.conf", O_RDONLY|O_CLOEXEC) = 3
41  openat(AT_FDCWD, "/proc/self/maps", O_RDONLY|O_CLOEXEC) = 3
41 openat(AT_FDCWD, "/r/etc/subgid.tmp.41", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0644) = 4
rename("/r/etc/subgid.tmp.41", "/r/etc/subgid") = 0
42 unlink("/r/a \"q\"") = -1 ENOENT (No such file or directory)
42 openat(AT_FDCWD, "/r/x", O_RDONLY <unfinished ...>
<... openat resumed>) = 5
42 clone3({flags=CLONE_VM, exit_signal=SIGCHLD}, 88) = 43
41 +++ exited with 0 +++
43 openat2(3</r>, "etc/subgid", {flags=O_RDONLY|O_NONBLOCK|O_CLOEXEC, resolve=RESOLVE_IN_ROOT}, 24) = 4</r/etc/subgid>
43 renameat(5</r/etc>, "subgid.tmp.43", 5</r/etc>, "subgid") = 0
43 fsync(5</r/etc>) = 0
"#;
    let calls = parse_log(log, "/r");
    let short: Vec<(&str, &str, bool)> = calls
        .iter()
        .map(|c| (c.syscall.as_str(), c.path.as_str(), c.mutates))
        .collect();
    assert_eq!(calls[2].flags, "O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0644");
    assert_eq!((calls[4].arg, calls[4].flags.as_str()), (1, ""));
    assert_eq!(
        short,
        vec![
            ("openat", "/etc/pve/lxc/105.conf", false),
            ("openat", "/proc/self/maps", false),
            ("openat", "/etc/subgid.tmp.41", true),
            ("rename", "/etc/subgid.tmp.41", true),
            ("rename", "/etc/subgid", true),
            ("unlink", "/a \"q\"", true),
            ("openat", "/x", false),
            ("clone3", "", false),
            ("openat2", "/etc/subgid", false),
            ("renameat", "/etc/subgid.tmp.43", true),
            ("renameat", "/etc/subgid", true),
            ("fsync", "/etc", false),
        ]
    );
    assert_eq!(calls[10].arg, 1);
    let t = Trace {
        calls: calls.clone(),
        status: std::process::ExitStatus::default(),
        stderr: String::new(),
    };
    assert_eq!(
        t.opened(),
        set(&[
            "/etc/pve/lxc/105.conf",
            "/etc/subgid",
            "/etc/subgid.tmp.41",
            "/x"
        ])
    );
    assert_eq!(t.renamed_to(), set(&["/etc/subgid"]));
    assert_eq!(t.spawns(), 1);
    assert_eq!(t.write_opens(), vec![&calls[2]]);
    assert_eq!(t.synced(), ["/etc"]);
}

/// Durability, and its cost: the first start flushes what a crash must not
/// tear (`/etc/subgid`'s temp before its rename, as shadow does; a lost
/// rename leaves the old file, and the next start adds the line again) and
/// nothing else. `/var/lib/lxc/<vmid>/config` is regenerated by Proxmox at
/// every start and never flushed by it: neither the file nor its directory.
/// The node state holds only reports once `/etc/pve` holds the rest (each
/// post-start writes them again): not flushed either.
#[test]
fn typical_first_start_flushes_only_what_a_crash_must_not_lose() {
    let dir = root_with(shapes::typical);
    let root = dir.path().join("r");
    let t = trace(&root, &[shapes::VMID, "pre-start"]);
    assert!(t.status.success(), "{}", t.stderr);
    let mut synced = t.synced();
    synced.sort();
    assert_eq!(
        synced,
        ["/etc/subgid.tmp.PID"],
        "/etc/subgid's new text once, not its directory; nothing on /etc/pve (pmxcfs \
         has no fsync), not the node state's reports"
    );
    assert!(
        t.synced()
            .iter()
            .all(|p| !p.starts_with("/var/lib/lxc") && !p.starts_with("/var/lib/pct-passthrough")),
        "{:?}",
        t.synced()
    );
    // The order the tool depends on: a temp file is flushed before the
    // rename that puts it in place.
    for (i, c) in t.calls.iter().enumerate() {
        if c.syscall.starts_with("rename")
            && c.arg == 0
            && !c.path.starts_with("/var/lib/lxc")
            && !c.path.starts_with("/var/lib/pct-passthrough")
        {
            let flushed = t.calls[..i]
                .iter()
                .any(|s| SYNCS.contains(&s.syscall.as_str()) && s.path == c.path);
            assert!(
                flushed || c.path.contains("subgid-") || c.path.starts_with("/etc/pve/"),
                "{c:?} renamed unflushed"
            );
        }
    }
}

/// What leaving `/etc/subgid`'s directory unflushed may cost: a crash that
/// loses the rename leaves the old file, and the next start adds the line
/// again (the config, already written, stays as it is).
#[test]
fn a_lost_subgid_rename_is_made_good_by_the_next_start() {
    let dir = root_with(shapes::typical);
    let root = dir.path().join("r");
    let subgid = root.join("etc/subgid");
    let conf = root.join("etc/pve/lxc/105.conf");
    let old = std::fs::read_to_string(&subgid).unwrap();
    let t = trace(&root, &[shapes::VMID, "pre-start"]);
    assert!(t.status.success(), "{}", t.stderr);
    let new = std::fs::read_to_string(&subgid).unwrap();
    assert!(
        new.contains("root:20:1\n") && !old.contains("root:20:1\n"),
        "{new}"
    );
    let conf_text = std::fs::read(&conf).unwrap();
    // The crash: the rename never reached the disk.
    std::fs::write(&subgid, &old).unwrap();
    let t = trace(&root, &[shapes::VMID, "pre-start"]);
    assert!(t.status.success(), "{}", t.stderr);
    assert_eq!(std::fs::read_to_string(&subgid).unwrap(), new);
    assert_eq!(std::fs::read(&conf).unwrap(), conf_text);
}
