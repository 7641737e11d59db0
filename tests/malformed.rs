//! Hostile or broken input files get one clear error naming the file and
//! line, never a panic, never a write.

use rstest::rstest;

mod common;
use common::{stderr, TempRoot};

fn garbage(len: usize) -> Vec<u8> {
    // Deterministic pseudo-random bytes.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn oversized_container_config_is_refused() {
    let bytes = vec![b'a'; 50 << 20];
    let root = TempRoot::new();
    let conf = root.write("/etc/pve/lxc/105.conf", &bytes);
    let out = root.run(&["105", "pre-start"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&conf.display().to_string()),
        "names the file: {err}"
    );
    assert!(
        err.contains("larger than the 1048576 bytes allowed"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(root.read("/etc/pve/lxc/105.conf"), bytes, "nothing written");
}

/// Proxmox reads a config as bytes and only warns about lines it cannot
/// parse (issue 13): the tool does not refuse such a config for how it is
/// written, and writes nothing when it has nothing to do.
#[rstest]
#[case::binary_garbage(garbage(4096))]
#[case::invalid_utf8_line_3(b"arch: amd64\ncores: 1\nhostname: \xff\xfe\n".to_vec())]
#[case::one_mib_line(format!("arch: amd64\ndescription: {}\n", "x".repeat((1 << 20) - 100)).into_bytes())]
#[case::nul_byte(b"arch: amd64\n\0\n".to_vec())]
fn odd_bytes_in_a_container_config_are_not_refused(#[case] bytes: Vec<u8>) {
    let root = TempRoot::new();
    root.write("/etc/pve/lxc/105.conf", &bytes);
    let out = root.run(&["105", "pre-start"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(root.read("/etc/pve/lxc/105.conf"), bytes, "nothing written");
}

#[rstest]
#[case::garbage(garbage(512), "not valid UTF-8")]
#[case::bad_toml(b"enabled = yes\n".to_vec(), "line 1")]
#[case::unknown_key(b"enabled = true\nidmapp = []\n".to_vec(), "line 2: unknown field `idmapp`")]
#[case::huge(vec![b'#'; 20 << 20], "larger than")]
fn bad_policy_refuses_pre_start(#[case] bytes: Vec<u8>, #[case] expect: &str) {
    let root = TempRoot::new();
    root.write(
        "/etc/pve/lxc/105.conf",
        common::fixture("debian-basic.conf"),
    );
    let policy = root.write("/etc/pve/pct-passthrough/105.toml", &bytes);
    let before = root.snapshot();
    let out = root.run(&["105", "pre-start"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&policy.display().to_string()), "{err}");
    assert!(err.contains(expect), "{err}");
    // Nothing but the state recording the refusal (and the tool's lock).
    let mut after = root.snapshot();
    after.retain(|(p, ..)| {
        !p.ends_with("var/lib/pct-passthrough/105.json") && !p.starts_with(root.at("/run/lock"))
    });
    assert_eq!(after, before);
    let state = String::from_utf8(root.read("/var/lib/pct-passthrough/105.json")).unwrap();
    assert!(state.contains("\"outcome\": \"refused\""), "{state}");
}

#[rstest]
#[case::garbage(garbage(300))]
#[case::future_version(br#"{"version": 99, "vmid": 105}"#.to_vec())]
#[case::truncated(br#"{"version": 1, "vmid": 1"#.to_vec())]
fn bad_state_is_reported_and_ignored(#[case] bytes: Vec<u8>) {
    let root = TempRoot::new();
    root.write(
        "/etc/pve/lxc/105.conf",
        common::fixture("debian-basic.conf"),
    );
    root.write("/var/lib/pct-passthrough/105.json", &bytes);
    let out = root.run(&["105", "pre-start"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("105.json"), "{err}");
    assert!(err.contains("ignored"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A `devN` Proxmox cannot parse is reported with its line and a fix, and
/// never read as a device (issue 12 item 10).
#[test]
fn a_devn_line_that_does_not_parse_is_reported() {
    let root = TempRoot::new();
    let bytes = b"arch: amd64\nunprivileged: 1\ndev0: ,gid=abc\n";
    let conf = root.write("/etc/pve/lxc/105.conf", bytes);
    let out = root.run(&["105", "pre-start"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let want = format!(
        "{} line 3: dev0: ',gid=abc': gid=abc is not a number; fix: write it as 'dev0: /dev/<node>",
        conf.display()
    );
    assert!(err.contains(&want), "{err}");
    assert_eq!(root.read("/etc/pve/lxc/105.conf"), bytes, "nothing written");
}

#[path = "../benches/support/shapes.rs"]
mod shapes;

/// Issue 12 item 9: IDs at the top of the range passed validation and the
/// tool wrote a map and `root:4294967295:1` the kernel refuses (EINVAL: a
/// range needs first + count <= 4294967295 on both sides). On the typical
/// host (a serial stick: GID 20 through), with a person's map lines or a
/// policy at the boundary. Needs root (the sample host has a device node).
#[rstest]
#[case::policy_reserved_id(
    "",
    "idmap = [\"uid 4294967295 4294967295\"]\n",
    Err("4294967295 is too large; the largest ID a map may use is 4294967294")
)]
#[case::policy_range_reaching_it(
    "",
    "idmap = [\"both 4294967290-4294967295 0-5\"]\n",
    Err("4294967295 is too large")
)]
#[case::policy_runtime_uid(
    "",
    "runtime_uid = 4294967295\n",
    Err("runtime_uid 4294967295 is not a user ID")
)]
#[case::person_map_reserved_id(
    "lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 65536\nlxc.idmap: u 4294967295 4294967295 1\n",
    "",
    Err("invalid map entry 'u 4294967295 4294967295 1': container uids reach 4294967295")
)]
#[case::person_map_host_side(
    "lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 65536\nlxc.idmap: u 70000 4294967294 2\n",
    "",
    Err("host uids reach 4294967295")
)]
#[case::policy_last_id(
    "",
    "idmap = [\"uid 4294967294 4294967294\"]\n",
    Ok("root:4294967294:1\n")
)]
fn ids_at_the_top_of_the_range(
    #[case] conf_lines: &str,
    #[case] policy: &str,
    #[case] want: Result<&str, &str>,
) {
    let root = TempRoot::new();
    shapes::typical(root.path()).expect("build the shape (needs root)");
    let mut conf = root.read("/etc/pve/lxc/105.conf");
    conf.extend_from_slice(conf_lines.as_bytes());
    root.write("/etc/pve/lxc/105.conf", conf);
    if !policy.is_empty() {
        root.write("/etc/pve/pct-passthrough/105.toml", policy);
    }
    let before = root.snapshot();
    let out = root.run(&["105", "pre-start"]);
    let err = stderr(&out);
    match want {
        Err(msg) => {
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(err.contains(msg), "{err}");
            // Nothing written but the state recording the refusal.
            let mut after = root.snapshot();
            after.retain(|(p, ..)| {
                !p.ends_with("var/lib/pct-passthrough/105.json")
                    && !p.starts_with(root.at("/run/lock"))
            });
            assert!(after == before, "nothing written: {err}");
        }
        Ok(subuid_tail) => {
            assert_eq!(out.status.code(), Some(0), "{err}");
            let subuid = String::from_utf8(root.read("/etc/subuid")).unwrap();
            assert!(subuid.ends_with(subuid_tail), "{subuid}");
            let lxc = String::from_utf8(root.read("/var/lib/lxc/105/config")).unwrap();
            assert!(
                lxc.contains("lxc.idmap = u 4294967294 4294967294 1"),
                "{lxc}"
            );
        }
    }
}
