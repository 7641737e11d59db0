//! The benchmark harness's own parts: the shapes are what their rows claim
//! (sizes, a valid policy, a parsable config) and the statistics are right.

#[path = "../benches/support/shapes.rs"]
mod shapes;
#[path = "../benches/support/stats.rs"]
mod stats;

use pct_passthrough::model::policy::Policy;
use pct_passthrough::model::pveconf::{LineKind, PveConfig};
use rstest::rstest;

fn sample_conf() -> String {
    std::fs::read_to_string(shapes::sample_host().join("etc/pve/lxc/105.conf")).unwrap()
}

#[rstest]
#[case(1)]
#[case(10)]
#[case(16)]
#[case(17)]
#[case(23)]
#[case(100)]
#[case(1000)]
#[case(10_000)]
fn config_of_lines_has_exactly_that_many_lines(#[case] n: usize) {
    let text = shapes::config_of_lines(&sample_conf(), n);
    assert_eq!(text.lines().count(), n);
    assert!(text.ends_with('\n'));
    let conf = PveConfig::parse(&text);
    assert_eq!(conf.render(), text);
    assert!(
        conf.lines()
            .iter()
            .all(|l| !matches!(l.kind, LineKind::Unknown)),
        "every line is one PVE understands"
    );
}

#[test]
fn large_config_has_snapshots_pending_and_one_main_section() {
    let text = shapes::config_of_lines(&sample_conf(), shapes::LARGE_CONFIG_LINES);
    let conf = PveConfig::parse(&text);
    let snapshots = conf
        .lines()
        .iter()
        .filter(|l| matches!(l.kind, LineKind::SnapshotHeader(_)))
        .count();
    let pending = conf
        .lines()
        .iter()
        .filter(|l| matches!(l.kind, LineKind::PendingHeader))
        .count();
    assert!(snapshots > 30, "{snapshots} snapshots");
    assert_eq!(pending, 1);
    // The main section is the sample's: one bind of the stick.
    assert_eq!(conf.mount_entries().len(), 1);
}

#[test]
fn large_subid_has_10000_disjoint_lines_below_2_pow_32() {
    let text = shapes::large_subid(shapes::LARGE_SUBID_LINES);
    assert_eq!(text.lines().count(), shapes::LARGE_SUBID_LINES);
    let mut prev_end = 0u64;
    for l in text.lines() {
        let f: Vec<&str> = l.split(':').collect();
        let (start, len): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        assert!(start >= prev_end, "{l}");
        prev_end = start + len;
    }
    assert!(prev_end < 1 << 32);
}

#[test]
fn policy_idmap_is_a_valid_policy_with_n_separate_lines() {
    let text = shapes::policy_idmap(shapes::LARGE_PASSTHROUGHS);
    let p = Policy::parse("p.toml", &text).unwrap();
    assert_eq!(p.idmap.len(), shapes::LARGE_PASSTHROUGHS);
    assert_eq!(p.idmap[0].get_ref(), "uid 1000 1000");
    assert_eq!(p.idmap[1].get_ref(), "gid 1000 1000");
    assert_eq!(p.idmap[299].get_ref(), "gid 1298 1298");
}

#[test]
fn shapes_build_and_copy_with_the_stick_node() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    shapes::large(&a).expect("needs root");
    let b = dir.path().join("b");
    shapes::copy_tree(&a, &b).unwrap();
    let m = std::fs::metadata(b.join(shapes::STICK.trim_start_matches('/'))).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(
        (m.rdev(), m.gid(), m.mode() & 0o777),
        (nix::sys::stat::makedev(188, 0), 20, 0o660)
    );
    let fa = shapes::files(&a).unwrap();
    assert_eq!(
        shapes::changed(&fa, &shapes::files(&b).unwrap()),
        Vec::<std::path::PathBuf>::new()
    );
    std::fs::write(b.join("etc/subgid"), "x\n").unwrap();
    std::fs::write(b.join("etc/new"), "y\n").unwrap();
    assert_eq!(
        shapes::changed(&fa, &shapes::files(&b).unwrap()),
        vec![std::path::PathBuf::from("etc/new"), "etc/subgid".into()]
    );
}

#[test]
fn devn_shape_names_the_stick_as_dev0_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    shapes::typical_devn(dir.path()).unwrap();
    let conf = PveConfig::parse(
        &std::fs::read_to_string(dir.path().join("etc/pve/lxc/105.conf")).unwrap(),
    );
    let devs = conf.dev_entries();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].path, shapes::STICK);
    assert!(conf.mount_entries().is_empty());
}

#[test]
fn nothing_shape_has_no_device_bind() {
    let dir = tempfile::tempdir().unwrap();
    shapes::nothing(dir.path()).unwrap();
    let conf = PveConfig::parse(
        &std::fs::read_to_string(dir.path().join("etc/pve/lxc/105.conf")).unwrap(),
    );
    assert!(!pct_passthrough::model::prestart::config_has_work(&conf));
}

#[test]
fn statistics() {
    assert_eq!(stats::summary(&[3.0, 1.0, 2.0]).median, 2.0);
    assert_eq!(stats::summary(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    let s = stats::summary(&[5.0, 1.0, 9.0]);
    assert_eq!((s.min, s.max, s.n), (1.0, 9.0, 3));
    assert!((stats::exponent(10.0, 1.0, 100.0, 100.0) - 2.0).abs() < 1e-9);
    assert!((stats::exponent(10.0, 1.0, 100.0, 10.0) - 1.0).abs() < 1e-9);
    let k = stats::nlogn_exponent(1000.0, 10000.0);
    assert!(k > 1.12 && k < 1.13, "{k}");
    assert_eq!(stats::fmt_time(2.5e-3), "2.50 ms");
    assert_eq!(stats::fmt_time(812e-6), "812 µs");
    assert_eq!(stats::fmt_time(3.25e-9), "3.2 ns");
    assert_eq!(stats::fmt_bytes(3.0 * 1024.0 * 1024.0), "3.00 MiB");
}

#[test]
fn percentiles_are_measured_values() {
    let xs: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(stats::percentile(&xs, 50.0), 50.0);
    assert_eq!(stats::percentile(&xs, 99.0), 99.0);
    assert_eq!(stats::percentile(&xs, 100.0), 100.0);
    assert_eq!(stats::percentile(&[3.0, 1.0, 2.0], 99.0), 3.0);
    assert_eq!(stats::percentile(&[3.0, 1.0, 2.0], 0.0), 1.0);
}

#[test]
fn many_shape_has_a_stick_and_a_mix_of_groups_per_container() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let cts = shapes::many(dir.path(), 64).expect("needs root");
    assert_eq!(cts.len(), 64);
    let count = |gid: u32| cts.iter().filter(|c| c.gid == gid).count();
    assert_eq!((count(20), count(44), count(27)), (16, 16, 16));
    assert_eq!(cts.iter().filter(|c| c.gid >= 5000).count(), 16);
    assert_eq!(cts.iter().filter(|c| c.uid.is_some()).count(), 8);
    let mut links = std::collections::BTreeSet::new();
    for ct in &cts {
        let conf = PveConfig::parse(
            &std::fs::read_to_string(dir.path().join(format!("etc/pve/lxc/{}.conf", ct.vmid)))
                .unwrap(),
        );
        let mounts = conf.mount_entries();
        assert_eq!(mounts.len(), 1);
        let link = mounts[0].source.clone();
        let node = std::fs::metadata(dir.path().join(link.trim_start_matches('/'))).unwrap();
        assert_eq!(node.gid(), ct.gid, "{link}");
        assert!(links.insert(link), "each container its own stick");
        assert!(conf.userns());
    }
    // Before any start, the check finds what is missing.
    assert!(shapes::check_many_subids(dir.path(), &cts).is_err());
}
