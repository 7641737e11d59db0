//! Every parser of hand-edited or untrusted input takes any text without a
//! panic, and the editors keep every byte they do not change: subid appends
//! only append, group edits keep every line.

use pct_passthrough::model::device::CgroupRule;
use pct_passthrough::model::group::{ensure_groups, GroupWant};
use pct_passthrough::model::idmap::{IdRange, IdmapEntry, RawIdmap};
use pct_passthrough::model::lxcconf::LxcConfig;
use pct_passthrough::model::policy::Policy;
use pct_passthrough::model::pveconf::PveConfig;
use pct_passthrough::model::runtime::{self, IdMap};
use pct_passthrough::model::state::State;
use pct_passthrough::model::subid::SubidFile;
use pct_passthrough::model::{passwd, storage};
use proptest::prelude::*;

/// Text shaped like the line formats: fields, separators, digits, junk.
fn linelike() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        "[0-9]{0,11}",
        "[a-z_]{0,8}",
        Just("root".to_string()),
        Just("-".to_string()),
        Just("4294967295".to_string()),
        Just("18446744073709551616".to_string()),
        "[ -~]{0,6}",
        "\\PC{0,3}",
    ];
    let sep = prop::sample::select(vec![":", " ", "\t", ",", "=", "-", "\n", "\r\n", ""]);
    prop::collection::vec((field, sep), 0..30)
        .prop_map(|parts| parts.into_iter().map(|(f, s)| format!("{f}{s}")).collect())
}

/// Mostly valid `/etc/group` files with comments, blanks and odd lines.
fn group_like() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        (
            "[a-z]{1,8}",
            0u32..70_000,
            prop::collection::vec("[a-z]{1,6}", 0..3)
        )
            .prop_map(|(n, g, m)| format!("{n}:x:{g}:{}", m.join(","))),
        Just("dialout:x:20:".to_string()),
        Just("dialout:x:18:".to_string()),
        Just("svc:x:1000:".to_string()),
        Just("# comment".to_string()),
        Just(String::new()),
        "[ -~]{0,20}",
    ];
    (prop::collection::vec(line, 0..20), any::<bool>()).prop_map(|(lines, nl)| {
        let mut t = lines.join("\n");
        if nl && !t.is_empty() {
            t.push('\n');
        }
        t
    })
}

fn anytext() -> impl Strategy<Value = String> {
    prop_oneof![linelike(), "(?s).{0,300}"]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(800))]

    #[test]
    fn parsers_never_panic(t in anytext()) {
        let _ = PveConfig::parse(&t).dev_entries();
        let _ = PveConfig::parse(&t).mp_entries();
        let _ = PveConfig::parse(&t).mount_entries();
        let _ = Policy::parse("p.toml", &t);
        let _ = State::parse(&t);
        let _ = IdmapEntry::parse(&t);
        let _ = RawIdmap::parse(&t);
        let _ = LxcConfig::parse(&t).idmap();
        let _ = passwd::parse(&t);
        let _ = runtime::parse_status(&t);
        let _ = IdMap::parse(&t);
        let _ = runtime::parse_runtime_idmap(&t);
        let _ = storage::parse(&t);
        let _ = storage::parse_volume(&t);
        let _ = CgroupRule::parse(&t);
    }

    #[test]
    fn subid_plans_only_append(t in linelike(), start in 0u64..5_000_000_000, len in 1u64..100_000) {
        let f = SubidFile::parse(&t);
        if let Some((new, _)) = f.plan(&[IdRange::new(start, len)]) {
            let prefix = if t.is_empty() || t.ends_with('\n') { t.clone() } else { format!("{t}\n") };
            prop_assert!(new.starts_with(&prefix), "{new:?} does not start with {prefix:?}");
            prop_assert!(new.ends_with('\n'));
        }
    }

    #[test]
    fn group_edits_keep_every_line(t in prop_oneof![linelike(), group_like()]) {
        let wants = [GroupWant { gid: 20, name: "dialout".into() }];
        if let Ok(edit) = ensure_groups(&t, Some(&t), &wants, Some("svc")) {
            for new in [edit.group, edit.gshadow].into_iter().flatten() {
                // Every line the input had is still there, in order, except
                // one group line that got a member added.
                let old: Vec<&str> = t.lines().collect();
                let got: Vec<&str> = new.lines().collect();
                prop_assert!(got.len() >= old.len());
                let changed = old.iter().zip(&got).filter(|(a, b)| a != b).count();
                prop_assert!(changed <= 1, "{t:?} -> {new:?}");
            }
        }
    }
}
