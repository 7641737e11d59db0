//! A cluster on one machine: two node roots that share one `/etc/pve` (bind
//! mounts of one directory's `nodes` and `pct-passthrough`, and each node's
//! `/etc/pve/lxc` a link to `nodes/<node>/lxc`, as pmxcfs shows it), each
//! with its own `/etc/subgid` and `/var/lib`. Every run of the binary here
//! goes through strace and is checked against pmxcfs's rules for `/etc/pve`:
//! no flock or fcntl lock, no fsync, and only modes 0640 and 0600 (on every
//! chmod, and on every file there after each run). Needs root and strace.

#[path = "../benches/support/shapes.rs"]
mod shapes;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");

/// The sample host's bind of the Zigbee stick: the device the tests remove.
fn bind_line() -> String {
    format!(
        "lxc.mount.entry: {} dev/ttyUSB0 none bind,optional,create=file\n",
        shapes::STICK
    )
}

/// The sample config as a person wrote it (before any start).
fn sample_conf() -> String {
    fs::read_to_string(shapes::sample_host().join("etc/pve/lxc/105.conf")).unwrap()
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?} failed");
}

/// What one run printed, and how it ended.
struct Run {
    code: Option<i32>,
    stderr: String,
}

/// pmxcfs's rules, checked on an `strace -f -y` log: on a descriptor under
/// `/etc/pve`, no lock, no flush, no mode but 0640 and 0600.
fn pmxcfs_violations(log: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for line in log.lines() {
        let call = line
            .split_whitespace()
            .find(|w| w.contains('('))
            .unwrap_or("");
        let Some((name, _)) = call.split_once('(') else {
            continue;
        };
        let on_pve = line
            .split_once('<')
            .and_then(|(_, r)| r.split_once('>'))
            .is_some_and(|(p, _)| p.contains("/etc/pve/"));
        if !on_pve {
            continue;
        }
        let lock = name == "flock"
            || (name == "fcntl" && (line.contains("F_SETLK") || line.contains("F_OFD_SETLK")));
        let flush = matches!(name, "fsync" | "fdatasync" | "syncfs");
        let chmod = matches!(name, "fchmod" | "fchmodat" | "chmod")
            && !(line.contains(", 0640)") || line.contains(", 0600)"));
        if lock || flush || chmod {
            bad.push(line.to_string());
        }
    }
    bad
}

/// Every regular file under `dir` whose mode pmxcfs would not allow.
fn bad_modes(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return bad;
    };
    for e in entries.flatten() {
        let meta = fs::symlink_metadata(e.path()).unwrap();
        if meta.is_dir() {
            bad.extend(bad_modes(&e.path()));
        } else if meta.is_file() {
            let mode = meta.permissions().mode() & 0o7777;
            if mode != 0o640 && mode != 0o600 {
                bad.push(format!("{}: mode {mode:o}", e.path().display()));
            }
        }
    }
    bad
}

/// Runs the binary with `root` under strace and fails the test on any
/// pmxcfs rule it breaks.
fn run(root: &Path, args: &[&str]) -> Run {
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "256", "-o"])
        .arg(log.path())
        .args([
            "-e",
            "trace=flock,fcntl,fsync,fdatasync,syncfs,fchmod,fchmodat,chmod",
        ])
        .arg(BIN)
        .args(args)
        .env("PCT_PASSTHROUGH_ROOT", root)
        .output()
        .expect("strace (apt-get install strace)");
    let trace = fs::read_to_string(log.path()).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        pmxcfs_violations(&trace),
        Vec::<String>::new(),
        "{args:?} broke a pmxcfs rule on /etc/pve: {stderr}"
    );
    assert_eq!(
        bad_modes(&root.join("etc/pve")),
        Vec::<String>::new(),
        "{args:?}"
    );
    Run {
        code: out.status.code(),
        stderr,
    }
}

/// Two nodes, `a` and `b`, sharing one `/etc/pve`.
struct Cluster {
    dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("pve");
        for d in ["nodes/a/lxc", "nodes/b/lxc", "pct-passthrough"] {
            fs::create_dir_all(shared.join(d)).unwrap();
        }
        let mut c = Cluster {
            dir,
            mounts: Vec::new(),
        };
        for node in ["a", "b"] {
            let root = c.root(node);
            shapes::typical(&root).unwrap();
            let pve = root.join("etc/pve");
            fs::remove_dir_all(&pve).unwrap();
            for d in ["nodes", "pct-passthrough"] {
                let at = pve.join(d);
                fs::create_dir_all(&at).unwrap();
                sh(&[
                    "mount",
                    "--bind",
                    shared.join(d).to_str().unwrap(),
                    at.to_str().unwrap(),
                ]);
                c.mounts.push(at);
            }
            symlink(format!("nodes/{node}/lxc"), pve.join("lxc")).unwrap();
            c.members(node, 1);
        }
        c.write_conf("a", 105, &sample_conf());
        c
    }

    fn root(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }

    fn shared(&self, rel: &str) -> PathBuf {
        self.dir.path().join("pve").join(rel)
    }

    /// `/etc/pve/.members` as pmxcfs shows it on `node`.
    fn members(&self, node: &str, quorate: u8) {
        let text = format!(
            "{{\n\"nodename\": \"{node}\",\n\"version\": 4,\n\"cluster\": {{ \"name\": \"t\", \"version\": 2, \"nodes\": 2, \"quorate\": {quorate} }},\n\"nodelist\": {{\n  \"a\": {{ \"id\": 1, \"online\": 1, \"ip\": \"10.0.0.1\"}},\n  \"b\": {{ \"id\": 2, \"online\": 1, \"ip\": \"10.0.0.2\"}}\n  }}\n}}\n"
        );
        let p = self.root(node).join("etc/pve/.members");
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    }

    fn conf_path(&self, node: &str, vmid: u32) -> PathBuf {
        self.shared(&format!("nodes/{node}/lxc/{vmid}.conf"))
    }

    fn write_conf(&self, node: &str, vmid: u32, text: &str) {
        let p = self.conf_path(node, vmid);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    }

    fn conf(&self, node: &str, vmid: u32) -> String {
        fs::read_to_string(self.conf_path(node, vmid)).unwrap()
    }

    /// What Proxmox writes to `/var/lib/lxc/<vmid>/config` before pre-start
    /// (the sample's, for this VMID).
    fn generate_lxc_config(&self, node: &str, vmid: u32) {
        let text = fs::read_to_string(shapes::sample_host().join("var/lib/lxc/105/config"))
            .unwrap()
            .replace("105", &vmid.to_string());
        let p = self.root(node).join(format!("var/lib/lxc/{vmid}/config"));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// A start's pre-start on `node`, as Proxmox runs it.
    fn pre_start(&self, node: &str, vmid: u32) -> Run {
        self.generate_lxc_config(node, vmid);
        let r = run(&self.root(node), &[&vmid.to_string(), "pre-start"]);
        assert_eq!(r.code, Some(0), "pre-start {vmid} on {node}: {}", r.stderr);
        assert!(!r.stderr.contains("refus"), "{}", r.stderr);
        r
    }

    /// `pct migrate`: the config moves to the other node's directory.
    fn migrate(&self, vmid: u32, from: &str, to: &str) {
        fs::rename(self.conf_path(from, vmid), self.conf_path(to, vmid)).unwrap();
    }

    fn subgid(&self, node: &str) -> String {
        fs::read_to_string(self.root(node).join("etc/subgid")).unwrap()
    }

    fn cluster_state(&self, vmid: u32) -> serde_json::Value {
        let text =
            fs::read_to_string(self.shared(&format!("pct-passthrough/{vmid}.state.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Takes the device out of the config as a person would, and adds a
    /// line of their own; returns the config that must result.
    fn remove_device(&self, node: &str, vmid: u32) -> String {
        let person = "lxc.cgroup2.devices.allow: c 1:3 rwm\n";
        let conf = self.conf(node, vmid).replace(&bind_line(), person);
        self.write_conf(node, vmid, &conf);
        sample_conf().replace(&bind_line(), person)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

fn owned_idmap(state: &serde_json::Value) -> Vec<String> {
    state["owned"]["conf_lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|l| l.starts_with("lxc.idmap"))
        .map(str::to_string)
        .collect()
}

const TOOL_MAP: &[&str] = &[
    "lxc.idmap: u 0 100000 65536",
    "lxc.idmap: g 0 100000 20",
    "lxc.idmap: g 20 20 1",
    "lxc.idmap: g 21 100021 65515",
];

/// The exact cgroup rule for the stick (`c 188:0`), also the tool's.
const TOOL_RULE: &str = "lxc.cgroup2.devices.allow: c 188:0 rwm";

#[test]
fn ownership_follows_the_container_to_another_node() {
    let c = Cluster::new();
    // Node a: the first start writes the map and records it on /etc/pve.
    c.pre_start("a", 105);
    let conf = c.conf("a", 105);
    for l in TOOL_MAP.iter().chain([&TOOL_RULE]) {
        assert!(conf.contains(l), "{conf}");
    }
    assert_eq!(owned_idmap(&c.cluster_state(105)), TOOL_MAP);
    assert!(c.subgid("a").contains("root:20:1"));
    assert!(!c.subgid("b").contains("root:20:1"));
    let node_a = fs::read_to_string(c.root("a").join("var/lib/pct-passthrough/105.json")).unwrap();
    assert!(!node_a.contains("owned"), "node-local part only: {node_a}");

    // Migrated to b: its first start there adds b's subordinate IDs.
    c.migrate(105, "a", "b");
    let r = c.pre_start("b", 105);
    assert!(r.stderr.contains("added root:20:1"), "{}", r.stderr);
    assert!(c.subgid("b").contains("root:20:1"), "{}", c.subgid("b"));
    assert_eq!(c.conf("b", 105), conf, "the config needs nothing new");

    // The device goes: exactly the tool's lines go, the person's stay.
    let want = c.remove_device("b", 105);
    let r = c.pre_start("b", 105);
    assert_eq!(c.conf("b", 105), want, "{}", r.stderr);
    assert!(owned_idmap(&c.cluster_state(105)).is_empty());
    // And nothing is left to do.
    let r = c.pre_start("b", 105);
    assert!(!r.stderr.contains("conf"), "{}", r.stderr);
    assert_eq!(c.conf("b", 105), want);
}

#[test]
fn a_restore_to_a_new_vmid_on_another_node_recognises_the_tools_lines() {
    let c = Cluster::new();
    c.pre_start("a", 105);
    // `pct restore 106` on b (or a clone): the config as backed up, no state.
    c.write_conf("b", 106, &c.conf("a", 105));
    assert!(!c.shared("pct-passthrough/106.state.json").exists());
    let r = c.pre_start("b", 106);
    assert!(
        r.stderr.contains("recognised as the tool's"),
        "{}",
        r.stderr
    );
    assert_eq!(owned_idmap(&c.cluster_state(106)), TOOL_MAP);
    assert!(c.subgid("b").contains("root:20:1"));
    let want = c.remove_device("b", 106);
    let r = c.pre_start("b", 106);
    assert_eq!(c.conf("b", 106), want, "{}", r.stderr);
    // 105 on a is untouched.
    assert_eq!(owned_idmap(&c.cluster_state(105)), TOOL_MAP);
}

/// A state file as release 0.1 (today's main) writes it: one node-local
/// file with everything.
const V1_STATE: &str = r#"{
  "version": 1,
  "vmid": 105,
  "owned": {
    "conf_lines": [
      "lxc.idmap: u 0 100000 65536",
      "lxc.idmap: g 0 100000 20",
      "lxc.idmap: g 20 20 1",
      "lxc.idmap: g 21 100021 65515",
      "lxc.cgroup2.devices.allow: c 188:0 rwm"
    ],
    "dev_entries": []
  },
  "runtime_user": {
    "uid": 1000,
    "gid": 1000,
    "groups": [20, 1000],
    "name": "svc",
    "pid": 1,
    "comm": "node",
    "keeps_supplementary_groups": true,
    "detected_at": 1700000000
  },
  "container_groups": {
    "dialout": 20
  },
  "changes": [],
  "devices": [],
  "last_run": {
    "phase": "post-stop",
    "outcome": "ok",
    "message": "stopped",
    "at": 1700000100
  },
  "group_collisions": [],
  "dev_fallback": [],
  "first_boot_groups": false
}
"#;

#[test]
fn a_state_of_release_0_1_is_migrated_on_first_read() {
    let c = Cluster::new();
    let mut conf = sample_conf();
    for l in TOOL_MAP.iter().chain([&TOOL_RULE]) {
        conf.push_str(l);
        conf.push('\n');
    }
    c.write_conf("a", 105, &conf);
    let node_file = c.root("a").join("var/lib/pct-passthrough/105.json");
    fs::create_dir_all(node_file.parent().unwrap()).unwrap();
    fs::write(&node_file, V1_STATE).unwrap();
    // Read-only commands read it as it is, and write nothing.
    let st = run(&c.root("a"), &["status", "105", "--json"]);
    assert_eq!(st.code, Some(0), "{}", st.stderr);
    assert!(!c.shared("pct-passthrough/105.state.json").exists());

    let r = c.pre_start("a", 105);
    assert!(r.stderr.contains("migrated"), "{}", r.stderr);
    let cluster = c.cluster_state(105);
    assert_eq!(owned_idmap(&cluster), TOOL_MAP);
    assert_eq!(cluster["runtime_user"]["name"], "svc");
    assert_eq!(cluster["container_groups"]["dialout"], 20);
    let node: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&node_file).unwrap()).unwrap();
    assert_eq!(node["version"], 2);
    assert!(node.get("owned").is_none() && node.get("runtime_user").is_none());
    assert_eq!(
        node["last_run"]["message"], "stopped",
        "node fields kept: {node}"
    );
    assert_eq!(c.conf("a", 105), conf, "nothing to change in the config");

    // On b, the migrated ownership still removes exactly the tool's lines.
    c.migrate(105, "a", "b");
    let want = c.remove_device("b", 105);
    let r = c.pre_start("b", 105);
    assert_eq!(c.conf("b", 105), want, "{}", r.stderr);
}

/// A root whose `/etc/pve` is a read-only bind mount, as pmxcfs is without
/// quorum (a directory without write permission would not stop root).
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(dir: &Path) -> ReadOnly {
        let d = dir.to_str().unwrap();
        sh(&["mount", "--bind", d, d]);
        sh(&["mount", "-o", "remount,bind,ro", d]);
        ReadOnly(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    shapes::files(root)
        .unwrap()
        .into_iter()
        .filter(|(p, _)| !p.starts_with("run") && !p.ends_with("105.json"))
        .collect()
}

#[test]
fn without_quorum_nothing_changes_and_the_task_log_says_why() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("r");
    shapes::typical(&root).unwrap();
    let conf = root.join("etc/pve/lxc/105.conf");
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o640)).unwrap();
    fs::create_dir_all(root.join("etc/pve/pct-passthrough")).unwrap();
    let before = tree(&root);
    {
        let _ro = ReadOnly::mount(&root.join("etc/pve"));
        for _ in 0..2 {
            let r = run(&root, &["105", "pre-start"]);
            assert_eq!(r.code, Some(0), "{}", r.stderr);
            assert!(
                r.stderr.contains("read-only") && r.stderr.contains("nothing changed"),
                "{}",
                r.stderr
            );
            assert_eq!(tree(&root), before, "no file changed: {}", r.stderr);
        }
        // Recorded node-locally, where it can be.
        let node: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(root.join("var/lib/pct-passthrough/105.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(node["last_run"]["outcome"], "failed", "{node}");
        assert!(node.get("owned").is_none(), "{node}");
    }
    // pmxcfs's own word (`.members`) counts the same.
    let members = root.join("etc/pve/.members");
    fs::write(&members, "{\"nodename\": \"a\", \"version\": 3, \"cluster\": { \"name\": \"t\", \"version\": 2, \"nodes\": 2, \"quorate\": 0 },\n\"nodelist\": {}}\n").unwrap();
    fs::set_permissions(&members, fs::Permissions::from_mode(0o640)).unwrap();
    let r = run(&root, &["105", "pre-start"]);
    assert!(r.stderr.contains("no cluster quorum"), "{}", r.stderr);
    assert!(!fs::read_to_string(&conf).unwrap().contains("lxc.idmap"));
    // With quorum back, the start applies it.
    fs::remove_file(&members).unwrap();
    let r = run(&root, &["105", "pre-start"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(fs::read_to_string(&conf)
        .unwrap()
        .contains("lxc.idmap: g 20 20 1"));
    assert!(root.join("etc/pve/pct-passthrough/105.state.json").exists());
}

/// The checks themselves catch what they must.
#[test]
fn the_pmxcfs_checks_catch_locks_flushes_and_modes() {
    let log = "12 fsync(3</r/etc/pve/lxc/105.conf.tmp.12>) = 0\n\
               12 flock(4</r/etc/pve/x.lock>, LOCK_EX) = 0\n\
               12 fchmod(3</r/etc/pve/nodes/a/lxc/1.conf.tmp.1>, 0644) = 0\n\
               12 fchmod(3</r/etc/pve/nodes/a/lxc/1.conf.tmp.1>, 0640) = 0\n\
               12 fsync(3</r/etc/subgid.tmp.12>) = 0\n\
               12 flock(4</r/run/lock/pct-passthrough/105.lock>, LOCK_EX) = 0\n";
    assert_eq!(
        pmxcfs_violations(log).len(),
        3,
        "{:?}",
        pmxcfs_violations(log)
    );
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    fs::write(&p, "").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(bad_modes(d.path()).len(), 1);
}
