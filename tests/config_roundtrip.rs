//! The PVE config model keeps every byte: fixtures and generated configs.

use pct_passthrough::model::pveconf::{LineKind, PveConfig, Section};
use proptest::prelude::*;

mod common;

#[test]
fn every_fixture_round_trips() {
    let mut n = 0;
    for entry in std::fs::read_dir(common::fixture_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "conf") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(PveConfig::parse(&text).render(), text, "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 11, "expected the shared fixtures, found {n}");
}

#[test]
fn fixtures_read_as_pve_reads_them() {
    let c = PveConfig::parse(&common::fixture("equals-style.conf"));
    assert_eq!(c.idmap_lines().len(), 4);
    assert_eq!(c.idmap_lines()[2], "g 20 20 1");
    assert_eq!(c.cgroup2_allows(), vec!["c 166:0 rwm"]);
    assert_eq!(c.mount_entries()[0].source, "/dev/ttyACM0");

    let c = PveConfig::parse(&common::fixture("snapshots-pending.conf"));
    assert!(c.unprivileged());
    assert_eq!(
        c.get("memory"),
        Some("512"),
        "pending memory is not the main value"
    );
    assert_eq!(c.cgroup2_allows(), vec!["c 188:* rwm"]);
    assert_eq!(
        c.mount_entries().len(),
        1,
        "snapshot entries are not main entries"
    );

    let c = PveConfig::parse(&common::fixture("gpu-devn.conf"));
    let devs = c.dev_entries();
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[1].path, "/dev/dri/renderD128");
    assert_eq!(devs[1].gid, Some(104));
    assert_eq!(c.mp_entries()[0].mp.as_deref(), Some("/media"));

    let c = PveConfig::parse(&common::fixture("oci-app.conf"));
    assert_eq!(c.hookscript(), Some("local:snippets/pct-passthrough"));
    assert!(c.dev_entries()[0].path.starts_with("/dev/serial/by-id/"));

    assert!(!PveConfig::parse(&common::fixture("privileged.conf")).unprivileged());
    let c = PveConfig::parse(&common::fixture("crlf.conf"));
    assert!(c.unprivileged());
    assert_eq!(c.get("hostname"), Some("crlf-host"));
    let c = PveConfig::parse(&common::fixture("mp-idmap.conf"));
    assert_eq!(
        c.mp_entries()[0].idmap.as_deref(),
        Some("u:33:1000:1;g:33:1000:1")
    );
}

#[test]
fn insertion_lands_in_main_before_the_first_snapshot() {
    let text = common::fixture("snapshots-pending.conf");
    let mut c = PveConfig::parse(&text);
    c.push_raw("lxc.idmap", "g 20 20 1");
    let out = c.render();
    let (head, tail) = text.split_at(text.find("\n[before-upgrade]").unwrap());
    let (new_head, new_tail) = out.split_at(out.find("\n[before-upgrade]").unwrap());
    assert_eq!(new_tail, tail, "snapshot and pending sections untouched");
    assert_eq!(
        new_head,
        head.replacen("create=file\n", "create=file\nlxc.idmap: g 20 20 1\n", 1)
    );
    let again = PveConfig::parse(&out);
    assert_eq!(again.idmap_lines(), vec!["g 20 20 1"]);
}

#[test]
fn insertion_into_a_file_without_final_newline() {
    let text = common::fixture("no-final-newline.conf");
    let mut c = PveConfig::parse(&text);
    c.push_raw("lxc.idmap", "u 0 100000 65536");
    assert_eq!(c.render(), format!("{text}\nlxc.idmap: u 0 100000 65536\n"));
}

fn arb_line() -> impl Strategy<Value = String> {
    let ws = prop::sample::select(vec!["", " ", "  ", "\t", " \t "]);
    let key = prop::sample::select(vec![
        "arch",
        "cores",
        "dev0",
        "dev12",
        "mp0",
        "unprivileged",
        "hookscript",
        "memory",
        "x_y",
    ]);
    let raw = prop::sample::select(vec![
        "lxc.idmap",
        "lxc.mount.entry",
        "lxc.cgroup2.devices.allow",
        "lxc.environment.runtime",
    ]);
    let value = "[ -~]{0,30}|[äöü€ねこ]{1,5}";
    prop_oneof![
        (key.clone(), ws.clone(), value, ws.clone())
            .prop_map(|(k, a, v, b)| format!("{k}:{a}{v}{b}")),
        (raw.clone(), ws.clone(), value, ws.clone())
            .prop_map(|(k, a, v, b)| format!("{k}:{a}{v}{b}")),
        (raw, ws.clone(), ws.clone(), value).prop_map(|(k, a, b, v)| format!("{k}{a}={b}{v}")),
        value.prop_map(|v| format!("#{v}")),
        ws.clone().prop_map(String::from),
        "[a-z][a-z0-9_-]{1,10}".prop_map(|n| format!("[{n}]")),
        Just("[pve:pending]".to_string()),
        "[^\n]{0,40}",
    ]
}

fn arb_config() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((arb_line(), any::<bool>()), 0..40),
        any::<bool>(),
    )
        .prop_map(|(lines, final_newline)| {
            let mut s = String::new();
            for (line, crlf) in lines {
                s.push_str(&line);
                s.push_str(if crlf { "\r\n" } else { "\n" });
            }
            if !final_newline && s.ends_with('\n') {
                s.pop();
                if s.ends_with('\r') {
                    s.pop();
                }
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn render_of_parse_is_identity(text in arb_config()) {
        prop_assert_eq!(PveConfig::parse(&text).render(), text);
    }

    #[test]
    fn main_section_alone_parses_to_the_same_main_lines(text in arb_config()) {
        let whole = PveConfig::parse(&text);
        let main_text = pct_passthrough::model::pveconf::main_section(&text);
        prop_assert!(text.starts_with(main_text));
        let main = PveConfig::parse(main_text);
        let mains = |c: &PveConfig| -> Vec<pct_passthrough::model::pveconf::Line> {
            c.lines_with_sections()
                .filter(|(s, _)| *s == Section::Main)
                .map(|(_, l)| l.clone())
                .collect()
        };
        prop_assert_eq!(mains(&main), mains(&whole));
        prop_assert_eq!(main.lines().len(), mains(&whole).len());
        prop_assert_eq!(
            pct_passthrough::model::prestart::config_has_work(&main),
            pct_passthrough::model::prestart::config_has_work(&whole)
        );
    }

    /// A config is bytes (issue 13): any bytes round trip, through the
    /// bytes API and through the text form the `&str` API speaks, and an
    /// edit keeps every byte after the main section.
    #[test]
    fn any_bytes_round_trip_and_edits_keep_the_sections(
        bytes in proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\n'), Just(b'['), Just(b']'), Just(0x0b_u8)],
            0..300,
        )
    ) {
        use pct_passthrough::model::pveconf::{bytes_to_text, text_to_bytes};
        let c = PveConfig::parse_bytes(&bytes);
        prop_assert_eq!(c.render_bytes(), bytes.clone());
        let text = bytes_to_text(&bytes);
        prop_assert_eq!(text_to_bytes(&text).into_owned(), bytes.clone());
        prop_assert_eq!(PveConfig::parse(&text), c.clone());
        prop_assert_eq!(text_to_bytes(&c.render()).into_owned(), bytes.clone());
        let tail = |c: &PveConfig| -> Vec<Vec<u8>> {
            c.lines_with_sections()
                .filter(|(s, _)| *s != Section::Main)
                .map(|(_, l)| l.bytes().to_vec())
                .collect()
        };
        let mut edited = c.clone();
        edited.push_raw("lxc.idmap", "g 20 20 1");
        prop_assert_eq!(tail(&edited), tail(&c));
        prop_assert_eq!(edited.idmap_lines().last().copied(), Some("g 20 20 1"));
    }

    #[test]
    fn any_string_round_trips(text in "(?s).{0,200}") {
        prop_assert_eq!(PveConfig::parse(&text).render(), text);
    }

    #[test]
    fn insertion_only_touches_main(text in arb_config()) {
        let before = PveConfig::parse(&text);
        let mut c = before.clone();
        c.push_raw("lxc.idmap", "g 20 20 1");
        let after = PveConfig::parse(&c.render());
        let others = |c: &PveConfig| -> Vec<String> {
            c.lines_with_sections()
                .filter(|(s, _)| *s != Section::Main)
                .map(|(_, l)| l.text().into_owned())
                .collect()
        };
        prop_assert_eq!(others(&before), others(&after));
        let main_idmaps = |c: &PveConfig| c.idmap_lines().iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut expect = main_idmaps(&before);
        expect.push("g 20 20 1".into());
        prop_assert_eq!(main_idmaps(&after), expect);
        // Nothing before the new line changed except a repaired final newline.
        let new_line = after.lines().iter().position(|l| l.text() == "lxc.idmap: g 20 20 1" && matches!(l.kind, LineKind::Raw { .. }));
        prop_assert!(new_line.is_some());
    }
}
