//! `status <vmid> [--json]` through the real binary against a temp root:
//! the JSON parses and holds the contract fields (`vmid`, `idmap` lines,
//! `runtime_user` object or null), before and after pre-start and with a
//! recorded runtime user; the text report names the same facts.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");

struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let h = Host { _dir: dir, root };
        h.write(
            "etc/pve/lxc/105.conf",
            "arch: amd64\ndev0: /dev/ttyUSB0\nhookscript: local:snippets/pct-passthrough\nunprivileged: 1\n",
        );
        h.write(
            "etc/pve/pct-passthrough/105.toml",
            "idmap = [\"gid 44 44\"]\n",
        );
        h.write("etc/subuid", "root:100000:65536\n");
        h.write("etc/subgid", "root:100000:65536\n");
        common::device_node(&h.root.join("dev/ttyUSB0"), false, 188, 0, 20);
        h
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn status(&self, json: bool) -> String {
        let mut cmd = Command::new(BIN);
        cmd.args(["status", "105"]);
        if json {
            cmd.arg("--json");
        }
        let o = cmd
            .env("PCT_PASSTHROUGH_ROOT", &self.root)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    fn json(&self) -> Value {
        let out = self.status(true);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert!(v.is_object());
        v
    }
}

#[test]
fn json_contract_before_and_after_pre_start() {
    let h = Host::new();
    let v = h.json();
    assert_eq!(v["vmid"], 105);
    assert_eq!(
        v["idmap"],
        serde_json::json!(["u 0 100000 65536", "g 0 100000 65536"])
    );
    assert_eq!(v["idmap_source"], "default");
    assert!(v["runtime_user"].is_null());
    assert_eq!(v["devices"][0]["source"], "dev0");
    assert_eq!(v["devices"][0]["node"], "/dev/ttyUSB0");

    let o = Command::new(BIN)
        .args(["105", "pre-start"])
        .env("PCT_PASSTHROUGH_ROOT", &h.root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = h.json();
    let idmap: Vec<&str> = v["idmap"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(idmap.contains(&"g 44 44 1"), "{idmap:?}");
    assert!(idmap
        .iter()
        .all(|l| l.split(' ').count() == 4 && (l.starts_with("u ") || l.starts_with("g "))));
    assert_eq!(v["idmap_source"], "config");
    let owned: Vec<&str> = v["owned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(owned.contains(&"lxc.idmap: g 44 44 1"), "{owned:?}");
    assert!(
        v["subid"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["covered"] == true),
        "{v}"
    );
    let text = h.status(false);
    assert!(text.contains("  g 44 44 1   (pct-passthrough)\n"), "{text}");
    assert!(text.contains("  gid 44: covered\n"), "{text}");
}

#[test]
fn runtime_user_last_run_and_verdicts_from_state() {
    let h = Host::new();
    h.write(
        "var/lib/pct-passthrough/105.json",
        r#"{"version": 1, "vmid": 105,
            "runtime_user": {"uid": 1000, "gid": 1000, "groups": [1000, 20], "name": "node", "keeps_supplementary_groups": true, "detected_at": 1700000000},
            "devices": [{"path": "/dev/ttyUSB0", "verdict": "ok", "detail": "uid 1000 can open it through group 20"}],
            "last_run": {"phase": "post-start", "outcome": "changed", "message": "added node to dialout", "at": 1700000001}}"#,
    );
    let v = h.json();
    assert_eq!(
        v["runtime_user"],
        serde_json::json!({"uid": 1000, "gid": 1000, "groups": [1000, 20], "name": "node", "detected_at": 1700000000u64, "keeps_supplementary_groups": true})
    );
    assert_eq!(v["devices"][0]["verdict"], "ok");
    assert_eq!(v["last_run"]["phase"], "post-start");
    let text = h.status(false);
    assert!(text.contains("runtime user: node uid 1000 gid 1000 groups [1000,20], detected 2023-11-14 22:13:20 UTC"), "{text}");
    assert!(
        text.contains(
            "last run: post-start changed at 2023-11-14 22:13:21 UTC: added node to dialout"
        ),
        "{text}"
    );
    assert!(
        text.contains("  dev0 /dev/ttyUSB0: ok\n      uid 1000 can open it through group 20"),
        "{text}"
    );
}

#[test]
fn corrupt_state_and_bad_policy_are_reported_not_fatal() {
    let h = Host::new();
    h.write("var/lib/pct-passthrough/105.json", "{garbage");
    h.write("etc/pve/pct-passthrough/105.toml", "idmaps = []\n");
    let v = h.json();
    let p = v["problem"].as_str().unwrap();
    assert!(
        p.contains("unknown field `idmaps`") && p.contains("corrupt state"),
        "{p}"
    );
    assert!(v["runtime_user"].is_null());
}

#[test]
fn missing_container_exits_1() {
    let h = Host::new();
    fs::remove_file(h.root.join("etc/pve/lxc/105.conf")).unwrap();
    let o = Command::new(BIN)
        .args(["status", "105", "--json"])
        .env("PCT_PASSTHROUGH_ROOT", &h.root)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(String::from_utf8_lossy(&o.stderr).contains("105.conf: not found"));
}
