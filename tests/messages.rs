//! What the admin reads when pre-start refuses, run as Proxmox runs the
//! hook against a temp root: the real size of a file that is too large, and
//! the policy file and line behind every policy-caused error.

mod common;

use common::{stderr, TempRoot};

const GENERATED: &str =
    "lxc.arch = amd64\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n";

fn host(conf: &str, policy: Option<&str>) -> TempRoot {
    let root = TempRoot::new();
    root.write("/etc/subuid", "root:100000:65536\n");
    root.write("/etc/subgid", "root:100000:65536\n");
    root.write("/etc/pve/lxc/105.conf", conf);
    root.write("/var/lib/lxc/105/config", GENERATED);
    if let Some(p) = policy {
        root.write("/etc/pve/pct-passthrough/105.toml", p);
    }
    root
}

/// Runs pre-start as Proxmox does and returns its stderr; it must refuse.
fn refused(root: &TempRoot) -> String {
    let out = root.run(&["105", "pre-start"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

fn policy_path(root: &TempRoot) -> String {
    root.at("/etc/pve/pct-passthrough/105.toml")
        .display()
        .to_string()
}

#[test]
fn a_too_large_config_is_reported_with_its_real_size() {
    // 2,029,143 bytes of plausible config: larger than pmxcfs' 1 MiB.
    let mut conf = String::from("arch: amd64\nunprivileged: 1\n");
    let comment = format!("#{}\n", "x".repeat(98));
    while conf.len() + comment.len() <= 2_029_143 {
        conf.push_str(&comment);
    }
    conf.push_str(&"#".repeat(2_029_143 - conf.len() - 1));
    conf.push('\n');
    assert_eq!(conf.len(), 2_029_143);
    let root = host(&conf, None);
    let err = refused(&root);
    let file = root.at("/etc/pve/lxc/105.conf").display().to_string();
    assert!(
        err.contains(&format!(
            "{file}: 2029143 bytes is larger than the 1048576 bytes allowed"
        )),
        "{err}"
    );
    assert!(!err.contains("1048577"), "a capped read's size: {err}");
}

#[test]
fn a_refusal_caused_by_policy_idmap_lines_names_the_policy_file_and_lines() {
    let root = host(
        "arch: amd64\nunprivileged: 1\n",
        Some("idmap = [\n  \"gid 44 44\",\n  \"gid 45 44\",\n]\n"),
    );
    let err = refused(&root);
    let policy = policy_path(&root);
    assert!(
        err.contains(&format!("{policy} line 2: \"gid 44 44\"")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{policy} line 3: \"gid 45 44\"")),
        "{err}"
    );
    assert!(!err.contains("(policy line"), "{err}");
}

#[test]
fn a_person_map_refused_for_a_policy_line_names_the_policy_file() {
    let root = host(
        // A person's own map (not a copy of Proxmox's default, which is
        // adopted) that maps container gid 44 elsewhere.
        "arch: amd64\nunprivileged: 1\nlxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 1000\nlxc.idmap: g 1000 101000 64536\n",
        Some("enabled = true\nidmap = [\"gid 44 44\"]\n"),
    );
    let err = refused(&root);
    assert!(
        err.contains(&format!("{} line 2: \"gid 44 44\"", policy_path(&root))),
        "{err}"
    );
}

#[test]
fn a_missing_required_device_names_the_policy_file_and_line() {
    let dev = "/dev/serial/by-id/usb-Example_Stick_0001-if00-port0";
    let root = host(
        "arch: amd64\nunprivileged: 1\n",
        Some(&format!(
            "enabled = true\n\n[[device]]\npath = \"{dev}\"\nrequired = true\n"
        )),
    );
    let err = refused(&root);
    assert!(
        err.contains(&format!(
            "{} line 4: required device {dev} is missing",
            policy_path(&root)
        )),
        "{err}"
    );
}

#[test]
fn a_zero_detect_timeout_names_the_policy_file_and_line() {
    let root = host(
        "arch: amd64\nunprivileged: 1\n",
        Some("enabled = true\ndetect_timeout = 0\n"),
    );
    let err = refused(&root);
    assert!(
        err.contains(&format!(
            "{} line 2: detect_timeout = 0: it must be at least 1 second",
            policy_path(&root)
        )),
        "{err}"
    );
}
