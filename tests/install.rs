//! install/install.sh and install/uninstall.sh against a temp root, with a
//! fake `pct` on PATH that records its calls and edits the config as PVE
//! would: idempotent re-runs, chaining, and a byte-exact uninstall. A fake
//! `ssh`/`scp` pair records its calls and runs them on other nodes' roots
//! (`nodes/<ip>/` next to this one) for `--all-nodes`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pct_passthrough::model::policy::Policy;

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");

const STORAGE_CFG: &str = "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n\nlvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n\nnfs: shared-nfs\n\texport /srv/pve\n\tpath /mnt/pve/shared-nfs\n\tserver 10.0.0.5\n\tcontent snippets,iso\n";

/// `pct set VMID --hookscript VOL` / `--delete hookscript`, as PVE does it
/// (including its check that the snippet exists and is executable).
const FAKE_PCT: &str = r#"#!/bin/sh
echo "$*" >>"$PCT_LOG"
[ "$1" = set ] || { echo "fake pct: unsupported $1" >&2; exit 2; }
conf="$PCT_PASSTHROUGH_ROOT/etc/pve/lxc/$2.conf"
[ -f "$conf" ] || { echo "Configuration file 'nodes/pve1/lxc/$2.conf' does not exist" >&2; exit 2; }
case "$3" in
--hookscript)
    case "$4" in
    local:snippets/*) f="$PCT_PASSTHROUGH_ROOT/var/lib/vz/snippets/${4#local:snippets/}" ;;
    shared-nfs:snippets/*) f="$PCT_PASSTHROUGH_ROOT/mnt/pve/shared-nfs/snippets/${4#shared-nfs:snippets/}" ;;
    *) echo "bad volume $4" >&2; exit 2 ;;
    esac
    [ -f "$f" ] && [ -x "$f" ] || { echo "hookscript file '$4' does not exist" >&2; exit 2; }
    if sed '/^\[/,$d' "$conf" | grep -q '^hookscript:'; then
        sed -i "1,/^\[/ s|^hookscript:.*|hookscript: $4|" "$conf"
    else
        echo "hookscript: $4" >>"$conf"
    fi ;;
--delete) sed -i '1,/^\[/ {/^hookscript:/d}' "$conf" ;;
*) exit 2 ;;
esac
"#;

/// `pvesm set <id> --content <list>`: records the call and rewrites that
/// storage's content line, as PVE would (it would also take the cluster lock).
const FAKE_PVESM: &str = r#"#!/bin/sh
echo "pvesm $*" >>"$PCT_LOG"
[ "$1 $3" = "set --content" ] || exit 2
cfg="$PCT_PASSTHROUGH_ROOT/etc/pve/storage.cfg"
awk -v id="$2" -v c="$4" '/^[a-z]+: / { s = ($2 == id) } s && /^\tcontent / { print "\tcontent " c; next } { print }' "$cfg" >"$cfg.new"
mv "$cfg.new" "$cfg"
"#;

/// `ssh [-e X] [-o X]... root@HOST 'cd / && CMD'`: records the call and
/// runs CMD in the fake node's root.
const FAKE_SSH: &str = r#"#!/bin/sh
echo "ssh $*" >>"$PCT_LOG"
while [ $# -gt 0 ]; do
    case $1 in -e | -o) shift 2 ;; *) break ;; esac
done
host=${1#root@}
cmd=$2
case $cmd in "cd / && "*) cmd=${cmd#"cd / && "} ;; *) echo "fake ssh: not 'cd / && ...': $cmd" >&2; exit 255 ;; esac
[ -d "$FAKE_NODES/$host" ] || { echo "ssh: connect to host $host port 22: No route to host" >&2; exit 255; }
cd "$FAKE_NODES/$host" && exec sh -c "$cmd"
"#;

/// `scp -p [-o X]... FILE root@[HOST]:/PATH`: records the call and copies
/// FILE into the fake node's root.
const FAKE_SCP: &str = r#"#!/bin/sh
echo "scp $*" >>"$PCT_LOG"
while [ $# -gt 0 ]; do
    case $1 in -p) shift ;; -o) shift 2 ;; *) break ;; esac
done
src=$1
dest=${2#root@\[}
host=${dest%%\]:*}
path=${dest#*\]:}
[ -d "$FAKE_NODES/$host" ] || { echo "scp: No route to host" >&2; exit 255; }
cp -p "$src" "$FAKE_NODES/$host$path"
"#;

struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let bin = dir.path().join("bin");
        fs::create_dir_all(root.join("etc/pve/lxc")).unwrap();
        fs::create_dir_all(root.join("etc/pve/nodes/pve1")).unwrap();
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join("pct"), FAKE_PCT).unwrap();
        fs::write(bin.join("pvesm"), FAKE_PVESM).unwrap();
        fs::write(bin.join("ssh"), FAKE_SSH).unwrap();
        fs::write(bin.join("scp"), FAKE_SCP).unwrap();
        for f in ["ssh", "scp"] {
            fs::set_permissions(bin.join(f), fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(bin.join("pvesm"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(bin.join("pct"), fs::Permissions::from_mode(0o755)).unwrap();
        let h = Host {
            _dir: dir,
            root,
            bin,
        };
        h.write("etc/pve/storage.cfg", STORAGE_CFG);
        h.write(
            "etc/pve/lxc/105.conf",
            "arch: amd64\ndev0: /dev/ttyUSB0\nhostname: z2m\nunprivileged: 1\n",
        );
        h.write(
            "etc/pve/lxc/106.conf",
            "arch: amd64\nhookscript: local:snippets/old-hook.pl\nhostname: web\nunprivileged: 1\n\n[snap1]\nhookscript: local:snippets/older.pl\n",
        );
        h.write(
            "etc/pve/lxc/107.conf",
            "hookscript: local:snippets/backup-hook.sh\nunprivileged: 1\n",
        );
        h.write(
            "etc/pve/pct-passthrough/107.toml",
            "# media box\nidmap = [\"both 1000 1000\"]\n\n[[device]]\npath = \"/dev/dri/renderD128\"\n",
        );
        for hook in ["old-hook.pl", "backup-hook.sh"] {
            h.write(&format!("var/lib/vz/snippets/{hook}"), "#!/bin/sh\n");
            fs::set_permissions(
                h.path(&format!("var/lib/vz/snippets/{hook}")),
                fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        h
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn run(&self, script: &str, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("install")
            .join(script);
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap());
        Command::new("bash")
            .arg(script)
            .args(args)
            .env("PATH", path)
            .env("PCT_PASSTHROUGH_ROOT", &self.root)
            .env("PCT_LOG", self.root.join("pct.log"))
            .env("FAKE_NODES", self.nodes())
            .output()
            .unwrap()
    }

    fn install_cmd(&self, args: &[&str]) -> Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("install/install.sh");
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap());
        let mut c = Command::new("bash");
        c.arg(script)
            .args(["--binary", BIN])
            .args(args)
            .env("PATH", path)
            .env("PCT_PASSTHROUGH_ROOT", &self.root)
            .env("PCT_LOG", self.root.join("pct.log"));
        c
    }

    fn install(&self, args: &[&str]) -> Output {
        let mut a = vec!["--binary", BIN];
        a.extend_from_slice(args);
        self.run("install.sh", &a)
    }

    /// Where the fake `ssh`/`scp` find other nodes' roots, by address.
    fn nodes(&self) -> PathBuf {
        self.root.parent().unwrap().join("nodes")
    }

    /// A cluster of three: this node pve1, pve2 and pve3 (online or not)
    /// in `/etc/pve/.members`, each other node a root with its snippets
    /// directory.
    fn cluster(&self, pve3_online: bool) {
        let online = u8::from(pve3_online);
        self.write(
            "etc/pve/.members",
            &format!("{{\n\"nodename\": \"pve1\",\n\"version\": 7,\n\"cluster\": {{ \"name\": \"lab\", \"version\": 3, \"nodes\": 3, \"quorate\": 1 }},\n\"nodelist\": {{\n  \"pve1\": {{ \"id\": 1, \"online\": 1, \"ip\": \"10.0.0.1\"}},\n  \"pve2\": {{ \"id\": 2, \"online\": 1, \"ip\": \"10.0.0.2\"}},\n  \"pve3\": {{ \"id\": 3, \"online\": {online}, \"ip\": \"10.0.0.3\"}}\n  }}\n}}\n"),
        );
        for ip in ["10.0.0.2", "10.0.0.3"] {
            fs::create_dir_all(self.nodes().join(ip).join("var/lib/vz/snippets")).unwrap();
        }
    }

    /// A file on another node's root.
    fn remote(&self, ip: &str, abs: &str) -> PathBuf {
        self.nodes().join(ip).join(abs.trim_start_matches('/'))
    }

    /// Every file of the other nodes' roots with its bytes.
    fn remote_snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for ip in ["10.0.0.2", "10.0.0.3"] {
            let dir = self.nodes().join(ip);
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                for e in fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p.clone());
                        out.push((p, Vec::new()));
                    } else {
                        out.push((p.clone(), fs::read(&p).unwrap()));
                    }
                }
            }
        }
        out.sort();
        out
    }

    fn pct_calls(&self) -> Vec<String> {
        fs::read_to_string(self.root.join("pct.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Every file under the root with its bytes, except the pct log.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
            entries.sort_by_key(|e| e.path());
            for e in entries {
                let p = e.path();
                if p.is_dir() {
                    out.push((p.clone(), Vec::new()));
                    walk(&p, out);
                } else if !p.ends_with("pct.log") {
                    out.push((p.clone(), fs::read(&p).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn install_chains_rerun_is_idempotent_and_uninstall_restores() {
    let h = Host::new();
    let before = h.snapshot();

    let out = ok(&h.install(&["105", "106", "107"]));
    assert!(
        out.contains("enabled the 'snippets' content type on storage 'local'"),
        "{out}"
    );

    // storage.cfg: only local's content line changed; backup kept.
    assert_eq!(
        h.read("etc/pve/storage.cfg"),
        STORAGE_CFG.replace(
            "\tcontent iso,vztmpl,backup\n",
            "\tcontent iso,vztmpl,backup,snippets\n"
        )
    );
    assert_eq!(
        h.read("var/lib/pct-passthrough/install/storage.cfg.orig"),
        STORAGE_CFG
    );
    // The binary, executable, byte for byte.
    let snippet = h.path("var/lib/vz/snippets/pct-passthrough");
    assert_eq!(fs::read(&snippet).unwrap(), fs::read(BIN).unwrap());
    assert_eq!(
        fs::metadata(&snippet).unwrap().permissions().mode() & 0o777,
        0o755
    );

    // Registered; the old hookscripts chained, never clobbered.
    assert_eq!(
        h.pct_calls(),
        [
            "set 105 --hookscript local:snippets/pct-passthrough",
            "set 106 --hookscript local:snippets/pct-passthrough",
            "set 107 --hookscript local:snippets/pct-passthrough",
        ]
    );
    let p106 = h.read("etc/pve/pct-passthrough/106.toml");
    let p107 = h.read("etc/pve/pct-passthrough/107.toml");
    assert_eq!(
        Policy::parse("106.toml", &p106).unwrap().chain.as_deref(),
        Some("local:snippets/old-hook.pl")
    );
    let pol = Policy::parse("107.toml", &p107).unwrap();
    assert_eq!(pol.chain.as_deref(), Some("local:snippets/backup-hook.sh"));
    assert_eq!(pol.devices.len(), 1, "the rest of the policy is intact");
    // The snapshot's hookscript line is not ours to touch.
    assert!(h
        .read("etc/pve/lxc/106.conf")
        .ends_with("[snap1]\nhookscript: local:snippets/older.pl\n"));

    // Re-run: no pct call, no file changes.
    let after_install = h.snapshot();
    let out = ok(&h.install(&["105", "106", "107"]));
    assert!(out.contains("container 106: already uses"), "{out}");
    assert_eq!(h.pct_calls().len(), 3);
    assert_eq!(h.snapshot(), after_install);

    // Uninstall: every file as it was, previous hookscripts re-registered.
    let out = ok(&h.run("uninstall.sh", &[]));
    assert!(out.contains("uninstalled"), "{out}");
    assert_eq!(
        h.pct_calls()[3..],
        [
            "set 107 --hookscript local:snippets/backup-hook.sh",
            "set 106 --hookscript local:snippets/old-hook.pl",
            "set 105 --delete hookscript",
        ]
    );
    assert_eq!(h.snapshot(), before);

    // And again: nothing to undo.
    let out = ok(&h.run("uninstall.sh", &[]));
    assert!(out.contains("nothing to undo"), "{out}");
    assert_eq!(h.snapshot(), before);
}

#[test]
fn partial_uninstall_keeps_the_binary_and_other_containers() {
    let h = Host::new();
    ok(&h.install(&["105", "106"]));
    ok(&h.run("uninstall.sh", &["106"]));
    assert!(h
        .read("etc/pve/lxc/106.conf")
        .contains("hookscript: local:snippets/old-hook.pl\n"));
    assert!(!h.path("etc/pve/pct-passthrough/106.toml").exists());
    assert!(h
        .read("etc/pve/lxc/105.conf")
        .contains("hookscript: local:snippets/pct-passthrough\n"));
    assert!(h.path("var/lib/vz/snippets/pct-passthrough").exists());
    // The rest goes on a full uninstall.
    ok(&h.run("uninstall.sh", &[]));
    assert_eq!(h.read("etc/pve/storage.cfg"), STORAGE_CFG);
    assert!(!h.path("var/lib/vz/snippets/pct-passthrough").exists());
    assert!(!h.read("etc/pve/lxc/105.conf").contains("hookscript"));
}

#[test]
fn shared_storage_needs_no_storage_cfg_edit() {
    let h = Host::new();
    fs::create_dir_all(h.path("etc/pve/nodes/pve2")).unwrap();
    let before = h.snapshot();
    let out = ok(&h.install(&["--storage", "shared-nfs", "105"]));
    assert_eq!(h.read("etc/pve/storage.cfg"), STORAGE_CFG);
    assert!(h
        .path("mnt/pve/shared-nfs/snippets/pct-passthrough")
        .exists());
    assert_eq!(
        h.pct_calls(),
        ["set 105 --hookscript shared-nfs:snippets/pct-passthrough"]
    );
    assert!(
        !out.contains("in a cluster"),
        "shared storage needs no per-node hint: {out}"
    );
    ok(&h.run("uninstall.sh", &[]));
    // The directories it had to create are gone too.
    assert_eq!(h.snapshot(), before);
}

#[test]
fn directories_it_created_go_and_others_stay() {
    let h = Host::new();
    fs::remove_dir_all(h.path("etc/pve/pct-passthrough")).unwrap();
    let before = h.snapshot();
    ok(&h.install(&["106"]));
    assert!(h.path("etc/pve/pct-passthrough/106.toml").exists());
    // Someone else's file in a directory install created keeps it.
    h.write("etc/pve/pct-passthrough/200.toml", "enabled = false\n");
    let out = ok(&h.run("uninstall.sh", &[]));
    assert!(
        out.contains("kept /etc/pve/pct-passthrough: it is not empty"),
        "{out}"
    );
    fs::remove_file(h.path("etc/pve/pct-passthrough/200.toml")).unwrap();
    fs::remove_dir(h.path("etc/pve/pct-passthrough")).unwrap();
    assert_eq!(h.snapshot(), before);
}

#[test]
fn cluster_with_local_storage_says_how_to_install_everywhere() {
    let h = Host::new();
    h.cluster(true);
    let out = ok(&h.install(&["105"]));
    assert!(out.contains("this node is in a cluster"), "{out}");
    assert!(out.contains("install.sh --all-nodes"), "{out}");
    assert!(!h
        .pct_calls()
        .iter()
        .any(|c| c.starts_with("ssh") || c.starts_with("scp")));
}

#[test]
fn all_nodes_copies_over_root_ssh_idempotently_and_uninstall_undoes_it() {
    let h = Host::new();
    h.cluster(true);
    // pve3 already has another file there: it is kept and comes back.
    fs::write(
        h.remote("10.0.0.3", "/var/lib/vz/snippets/pct-passthrough"),
        "old\n",
    )
    .unwrap();
    let before = h.snapshot();
    let remote_before = h.remote_snapshot();
    let out = ok(&h.install(&["--all-nodes", "105"]));
    let bin = fs::read(BIN).unwrap();
    for (node, ip) in [("pve2", "10.0.0.2"), ("pve3", "10.0.0.3")] {
        let f = h.remote(ip, "/var/lib/vz/snippets/pct-passthrough");
        assert_eq!(fs::read(&f).unwrap(), bin, "{node}");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert!(out.contains(&format!("node {node}: installed")), "{out}");
    }
    assert_eq!(
        fs::read_to_string(h.remote(
            "10.0.0.3",
            "/var/lib/pct-passthrough/install/pct-passthrough.orig"
        ))
        .unwrap(),
        "old\n"
    );
    let calls = h.pct_calls();
    // As Proxmox's tools call it: batch mode, the node name as host key
    // alias, never this node itself.
    assert!(
        calls.iter().any(|c| c.starts_with(
            "ssh -e none -o BatchMode=yes -o HostKeyAlias=pve2 root@10.0.0.2 cd / && "
        )),
        "{calls:#?}"
    );
    assert!(
        calls.iter().any(
            |c| c.starts_with("scp -p -o BatchMode=yes -o HostKeyAlias=pve3 ")
                && c.contains(" root@[10.0.0.3]:/var/lib/vz/snippets/pct-passthrough.tmp.")
        ),
        "{calls:#?}"
    );
    assert!(!calls.iter().any(|c| c.contains("10.0.0.1")), "{calls:#?}");

    // Again: every node is up to date, nothing is copied.
    let manifest = h.read("var/lib/pct-passthrough/install/manifest");
    let n = calls.len();
    let out = ok(&h.install(&["--all-nodes", "105"]));
    assert!(
        out.contains("node pve2: ") && out.contains("is up to date"),
        "{out}"
    );
    let again = &h.pct_calls()[n..];
    assert!(again.iter().all(|c| !c.starts_with("scp")), "{again:#?}");
    assert_eq!(h.read("var/lib/pct-passthrough/install/manifest"), manifest);

    // uninstall.sh without --all-nodes keeps the other nodes' copies.
    let out = ok(&h.run("uninstall.sh", &["105"]));
    assert!(
        h.remote("10.0.0.2", "/var/lib/vz/snippets/pct-passthrough")
            .exists(),
        "{out}"
    );
    let out = ok(&h.run("uninstall.sh", &["--all-nodes"]));
    assert!(out.contains("node pve2: removed"), "{out}");
    assert_eq!(h.remote_snapshot(), remote_before, "{out}");
    assert_eq!(h.snapshot(), before, "{out}");
}

#[test]
fn all_nodes_warns_about_an_offline_node_and_skips_shared_storage() {
    let h = Host::new();
    h.cluster(false);
    let out = h.install(&["--all-nodes", "105"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node pve3 is offline"), "{err}");
    assert!(h
        .remote("10.0.0.2", "/var/lib/vz/snippets/pct-passthrough")
        .exists());
    assert!(!h
        .remote("10.0.0.3", "/var/lib/vz/snippets/pct-passthrough")
        .exists());

    let h = Host::new();
    h.cluster(true);
    let out = ok(&h.install(&["--all-nodes", "--storage", "shared-nfs", "105"]));
    assert!(out.contains("storage 'shared-nfs' is shared"), "{out}");
    assert!(!h
        .pct_calls()
        .iter()
        .any(|c| c.starts_with("ssh") || c.starts_with("scp")));
}

#[test]
fn on_a_proxmox_node_pvesm_enables_snippets() {
    let h = Host::new();
    let before = h.snapshot();
    let mut cmd_env = h.install_cmd(&["105"]);
    ok(&cmd_env
        .env("PCT_PASSTHROUGH_USE_PVESM", "1")
        .output()
        .unwrap());
    assert_eq!(
        h.pct_calls(),
        [
            "pvesm set local --content iso,vztmpl,backup,snippets",
            "set 105 --hookscript local:snippets/pct-passthrough",
        ]
    );
    assert!(h
        .read("etc/pve/storage.cfg")
        .contains("\tcontent iso,vztmpl,backup,snippets\n"));
    ok(&h.run("uninstall.sh", &[]));
    assert_eq!(h.snapshot(), before);
}

#[test]
fn storage_without_a_content_line_gets_one() {
    let h = Host::new();
    let cfg = "dir: local\n\tpath /var/lib/vz\n\nzfspool: tank\n\tpool tank\n";
    h.write("etc/pve/storage.cfg", cfg);
    ok(&h.install(&[]));
    assert_eq!(
        h.read("etc/pve/storage.cfg"),
        "dir: local\n\tcontent snippets\n\tpath /var/lib/vz\n\nzfspool: tank\n\tpool tank\n"
    );
    ok(&h.run("uninstall.sh", &[]));
    assert_eq!(h.read("etc/pve/storage.cfg"), cfg);
}

#[test]
fn refusals_name_the_problem() {
    let h = Host::new();
    // A policy that already chains something else: refused, nothing set.
    h.write(
        "etc/pve/pct-passthrough/106.toml",
        "chain = \"local:snippets/other.sh\"\n",
    );
    let out = h.install(&["106", "999"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already chains 'local:snippets/other.sh'"),
        "{err}"
    );
    assert!(
        err.contains("container 999: /etc/pve/lxc/999.conf not found"),
        "{err}"
    );
    assert!(h.pct_calls().is_empty());

    let out = h.install(&["--storage", "local-lvm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot hold snippets"));
    let out = h.install(&["--storage", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage 'nope' is not defined"));
    let out = h.install(&["12"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid vmid '12'"));
}

#[test]
fn a_file_already_at_the_snippet_path_comes_back() {
    let h = Host::new();
    h.write(
        "var/lib/vz/snippets/pct-passthrough",
        "#!/bin/sh\necho old\n",
    );
    ok(&h.install(&[]));
    assert_eq!(
        fs::read(h.path("var/lib/vz/snippets/pct-passthrough")).unwrap(),
        fs::read(BIN).unwrap()
    );
    ok(&h.run("uninstall.sh", &[]));
    assert_eq!(
        h.read("var/lib/vz/snippets/pct-passthrough"),
        "#!/bin/sh\necho old\n"
    );
}

/// Proxmox's VMIDs have no leading zero (`^[1-9][0-9]{2,8}$`): `0105` is
/// refused before anything changes, even after a valid VMID, and by
/// uninstall.sh too.
#[test]
fn a_vmid_with_a_leading_zero_is_refused_before_any_change() {
    let h = Host::new();
    let before = h.snapshot();
    for args in [
        &["0105"][..],
        &["105", "0105"],
        &["--storage", "local", "00105"],
    ] {
        let out = h.install(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("without a leading zero"), "{err}");
        assert_eq!(h.snapshot(), before, "{args:?} changed a file");
        assert!(h.pct_calls().is_empty(), "{args:?}");
    }
    let out = h.run("uninstall.sh", &["0105"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("invalid vmid '0105'"), "{err}");
    assert_eq!(h.snapshot(), before);
}
