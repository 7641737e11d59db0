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

#[rstest]
#[case::binary_garbage(garbage(4096), "not valid UTF-8")]
#[case::fifty_mib(vec![b'a'; 50 << 20], "larger than the 1048576 bytes allowed")]
#[case::invalid_utf8_line_3(b"arch: amd64\ncores: 1\nhostname: \xff\xfe\n".to_vec(), "line 3: not valid UTF-8")]
#[case::one_mib_line(format!("arch: amd64\ndescription: {}\n", "x".repeat((1 << 20) - 100)).into_bytes(), "line 2: longer than")]
#[case::nul_byte(b"arch: amd64\n\0\n".to_vec(), "line 2: contains a NUL byte")]
fn bad_container_config(#[case] bytes: Vec<u8>, #[case] expect: &str) {
    let root = TempRoot::new();
    let conf = root.write("/etc/pve/lxc/105.conf", &bytes);
    let out = root.run(&["105", "pre-start"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&conf.display().to_string()),
        "names the file: {err}"
    );
    assert!(err.contains(expect), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
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
    assert_eq!(root.snapshot(), before);
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
            assert_eq!(root.snapshot(), before, "nothing written: {err}");
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
