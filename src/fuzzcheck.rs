//! The checks the fuzz targets (`fuzz/`) and `tests/fuzz_corpus.rs` run on
//! one input each: parse, use, and assert the model's invariants (round
//! trips, appends that only append, a second decision on the first one's
//! output that changes nothing). A broken invariant panics with the input
//! and what broke; bad input itself never does. Not used by the binary.
//!
//! Several targets take their inputs as sections of one text, split on
//! lines of `%%` ([`sections`]), so corpus files stay readable.

use crate::model::device::{Node, NodeKind};
use crate::model::group::{self, GroupWant};
use crate::model::idmap::{self, IdKind, IdRange, IdmapEntry, RawIdmap};
use crate::model::passwd;
use crate::model::policy::Policy;
use crate::model::prestart::{self, Decision, DeviceFact, Facts, FileTarget, HostFile};
use crate::model::pveconf::{self, DevEntry, LineKind, PveConfig};
use crate::model::runtime::{self, IdMap, ProcStatus};
use crate::model::state::State;
use crate::model::subid::SubidFile;

/// The line that separates sections in a multi-part input.
pub const SEPARATOR: &str = "\n%%\n";

/// Splits a multi-part input into its sections (lossy UTF-8).
pub fn sections(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data)
        .split(SEPARATOR)
        .map(str::to_string)
        .collect()
}

fn section(parts: &[String], i: usize) -> &str {
    parts.get(i).map_or("", String::as_str)
}

/// The main section's bytes of a rendered config: everything before the
/// first section header line.
fn main_len(conf: &PveConfig) -> usize {
    conf.lines_with_sections()
        .take_while(|(s, _)| *s == pveconf::Section::Main)
        .map(|(_, l)| {
            l.bytes().len()
                + match l.eol {
                    pveconf::Eol::Lf => 1,
                    pveconf::Eol::CrLf => 2,
                    pveconf::Eol::None => 0,
                }
        })
        .sum()
}

// ---- the container config ----

/// `PveConfig`: any bytes round trip, through the bytes API and the text
/// form; every accessor takes them; `devN` entries render back to
/// themselves; appending a raw line keeps every byte after the main
/// section, adds exactly that line, and removing it gives the old lines.
pub fn pveconf(data: &[u8]) {
    let conf = PveConfig::parse_bytes(data);
    assert_eq!(conf.render_bytes(), data, "bytes do not round trip");
    let text = pveconf::bytes_to_text(data);
    assert_eq!(
        pveconf::text_to_bytes(&text).as_ref(),
        data,
        "the text form does not map back to the bytes"
    );
    assert_eq!(conf.render(), text, "render is not the text form");
    assert_eq!(
        PveConfig::parse(&text),
        conf,
        "the text form parses differently from the bytes"
    );
    let _ = (conf.unprivileged(), conf.userns(), conf.hookscript());
    let _ = (conf.mp_entries(), conf.cgroup2_allows(), conf.lxc_entries());
    let _ = conf.section_keys(&pveconf::Section::Main);
    for name in conf.snapshot_names() {
        let _ = conf.section_keys(&pveconf::Section::Snapshot(name.to_string()));
    }
    for m in conf.mount_entries() {
        let _ = m.is_bind();
    }
    for r in conf.dev_results() {
        match r {
            Ok(e) => {
                let again = DevEntry::parse(e.index, &e.render()).unwrap_or_else(|err| {
                    panic!(
                        "dev{} {:?}: render does not parse: {err}",
                        e.index,
                        e.render()
                    )
                });
                assert_eq!(
                    (
                        &again.path,
                        again.uid,
                        again.gid,
                        &again.mode,
                        again.deny_write
                    ),
                    (&e.path, e.uid, e.gid, &e.mode, e.deny_write),
                    "dev{} {:?} renders as {:?}",
                    e.index,
                    e.value,
                    e.render()
                );
            }
            Err(e) => {
                let _ = e.message("c.conf", 105);
            }
        }
    }

    // An edit touches the main section only.
    let tail = &data[main_len(&conf)..];
    let before = conf.idmap_lines().len();
    let mut edited = conf.clone();
    edited.push_raw("lxc.idmap", "g 20 20 1");
    let out = edited.render_bytes();
    assert!(
        out.ends_with(tail),
        "an edit changed bytes after the main section"
    );
    let reread = PveConfig::parse_bytes(&out);
    assert_eq!(
        reread.idmap_lines().len(),
        before + 1,
        "the appended line does not read back: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(reread.idmap_lines().last(), Some(&"g 20 20 1"));
    let mut back = reread.clone();
    back.remove_main_where(|l| {
        matches!(&l.kind, LineKind::Raw { key, value } if key == "lxc.idmap" && value == "g 20 20 1")
    });
    let mut want = conf.clone();
    want.remove_main_where(|l| {
        matches!(&l.kind, LineKind::Raw { key, value } if key == "lxc.idmap" && value == "g 20 20 1")
    });
    assert_eq!(back.idmap_lines(), want.idmap_lines());
}

// ---- ID maps ----

/// `IdmapEntry` and `RawIdmap` parse what they render; `compute` on the
/// input's `u|g` lines (the base) and `uid|gid|both` lines (passthroughs)
/// gives a map that validates, gives every passthrough, keeps every other
/// base ID where the base had it, and maps no container ID twice.
pub fn idmap(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut base = Vec::new();
    let mut wanted = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Ok(e) = IdmapEntry::parse(line) {
            assert_eq!(IdmapEntry::parse(&e.to_string()), Ok(e), "{line:?}");
            base.push(e);
        }
        if let Ok(r) = RawIdmap::parse(line) {
            let kinds = match r.kinds.as_slice() {
                [IdKind::Uid] => "uid",
                [IdKind::Gid] => "gid",
                _ => "both",
            };
            let incl = |x: IdRange| format!("{}-{}", x.start, x.end - 1);
            let again = RawIdmap::parse(&format!("{kinds} {} {}", incl(r.host), incl(r.ct)));
            assert_eq!(again.as_ref(), Ok(&r), "{line:?}");
            wanted.extend(r.passthroughs(&format!("line {}", i + 1)));
        }
    }
    let _ = idmap::validate(&base);
    let Ok(map) = idmap::compute(&base, &wanted) else {
        return;
    };
    let show = || format!("base {base:?}, passthroughs {wanted:?}, map {map:?}");
    assert_eq!(idmap::validate(&map), Ok(()), "{}", show());
    let unmet = idmap::unmet(&map, &wanted);
    assert!(unmet.is_empty(), "{unmet:?}: {}", show());
    for kind in IdKind::ALL {
        let mut cts: Vec<IdRange> = map
            .iter()
            .filter(|e| e.kind == kind)
            .map(IdmapEntry::ct_range)
            .collect();
        cts.sort_by_key(|r| r.start);
        for pair in cts.windows(2) {
            assert!(pair[0].end <= pair[1].start, "{kind:?} twice: {}", show());
        }
    }
    assert!(map.iter().all(|e| e.len > 0), "{}", show());
    // Stable: a base ID no passthrough names keeps its host ID.
    for b in base.iter().filter(|b| b.len > 0) {
        let last = b.ct + (b.len - 1);
        for ct in [b.ct, last, b.ct + (b.len - 1) / 2] {
            let punched = wanted
                .iter()
                .any(|p| p.kind == b.kind && p.ct <= ct && ct - p.ct < p.len);
            if !punched {
                assert_eq!(
                    idmap::lookup(&map, b.kind, ct),
                    Some(b.host + (ct - b.ct)),
                    "{:?} {ct} moved: {}",
                    b.kind,
                    show()
                );
            }
        }
    }
    // Computing again on the result changes nothing.
    assert_eq!(
        idmap::compute(&map, &wanted).as_ref(),
        Ok(&map),
        "{}",
        show()
    );
}

// ---- /etc/subuid and /etc/subgid ----

/// Section 0: the file; section 1: wanted ranges, `START COUNT` a line.
/// A plan only appends (every original line kept, a missing final newline
/// repaired), covers what was wanted, and a second plan appends nothing.
pub fn subid(data: &[u8]) {
    let parts = sections(data);
    let text = section(&parts, 0);
    let wanted: Vec<IdRange> = section(&parts, 1)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_ascii_whitespace().map(str::parse::<u64>);
            match (f.next(), f.next()) {
                (Some(Ok(s)), Some(Ok(n))) => Some(IdRange::new(s, n.min(1 << 33))),
                _ => None,
            }
        })
        .filter(|r| r.start < 1 << 34)
        .collect();
    let file = SubidFile::parse(text);
    assert_eq!(file.text(), text);
    for r in file.ranges() {
        assert!(
            !r.range.is_empty() && r.range.end <= idmap::ID_LIMIT,
            "{r:?}"
        );
        assert!(text.split('\n').nth(r.line - 1).is_some());
    }
    let Some((new, missing)) = file.plan(&wanted) else {
        assert!(file.missing(&wanted).is_empty());
        return;
    };
    assert!(!missing.is_empty());
    let prefix = if text.is_empty() || text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    };
    assert!(new.starts_with(&prefix), "{new:?} does not keep {prefix:?}");
    assert!(new.ends_with('\n'));
    let after = SubidFile::parse(&new);
    assert_eq!(
        after.plan(&wanted),
        None,
        "a second plan appends to {new:?}"
    );
    assert_eq!(
        after.ranges().len(),
        file.ranges().len() + missing.len(),
        "{new:?}"
    );
}

// ---- the container's /etc/group and /etc/gshadow ----

/// Section 0: `/etc/group`; 1: `/etc/gshadow` (`-` alone: none); 2: wanted
/// groups, `GID NAME` a line; 3: the member to add (empty: none). An edit
/// keeps every other line byte for byte, gives every wanted GID, and
/// applying it twice changes nothing.
pub fn group(data: &[u8]) {
    let parts = sections(data);
    let grp = section(&parts, 0);
    let gshadow = match section(&parts, 1) {
        "-" => None,
        s => Some(s),
    };
    let wants: Vec<GroupWant> = section(&parts, 2)
        .lines()
        .filter_map(|l| {
            let (gid, name) = l.split_once(' ')?;
            Some(GroupWant {
                gid: gid.parse().ok()?,
                name: name.to_string(),
            })
        })
        .collect();
    let member = Some(section(&parts, 3).trim_end_matches('\n')).filter(|m| !m.is_empty());
    let _ = group::check_text("/etc/group", grp.as_bytes());
    let Ok(edit) = group::ensure_groups(grp, gshadow, &wants, member) else {
        return;
    };
    let new_group = edit.group.clone().unwrap_or_else(|| grp.to_string());
    let new_shadow = gshadow.map(|s| edit.gshadow.clone().unwrap_or_else(|| s.to_string()));
    for (old, new) in [
        (Some(grp), Some(new_group.as_str())),
        (gshadow, new_shadow.as_deref()),
    ] {
        let (Some(old), Some(new)) = (old, new) else {
            continue;
        };
        kept_lines(old, new, member);
    }
    let ix = group::index(&new_group);
    for w in &wants {
        let name = ix
            .by_gid
            .get(&w.gid)
            .unwrap_or_else(|| panic!("gid {} missing from {new_group:?}", w.gid));
        if let Some(m) = member {
            assert!(
                ix.member_of.get(m).is_some_and(|g| g.contains(&w.gid)),
                "{m} not in {name} ({}) of {new_group:?}",
                w.gid
            );
        }
    }
    for o in &edit.outcomes {
        assert_eq!(ix.by_gid.get(&o.gid), Some(&o.name), "{o:?}");
    }
    let again = group::ensure_groups(&new_group, new_shadow.as_deref(), &wants, member)
        .unwrap_or_else(|e| panic!("the edited files do not edit again: {e}"));
    assert_eq!(again.group, None, "a second edit changes {new_group:?}");
    assert_eq!(again.gshadow, None, "a second edit changes {new_shadow:?}");
}

/// Every line of `old` is in `new` at its place, byte for byte, except a
/// line that only got `member` appended to its member list; lines after
/// them are new entries.
fn kept_lines(old: &str, new: &str, member: Option<&str>) {
    let o: Vec<&str> = old.split('\n').collect();
    let n: Vec<&str> = new.split('\n').collect();
    // A final newline repaired turns the last "" into a line.
    assert!(n.len() >= o.len(), "{old:?} -> {new:?}");
    for (i, (a, b)) in o.iter().zip(&n).enumerate() {
        if a == b || (i + 1 == o.len() && a.is_empty()) {
            continue;
        }
        let m = member.unwrap_or_else(|| {
            panic!(
                "line {} changed without a member: {old:?} -> {new:?}",
                i + 1
            )
        });
        let (a_body, cr) = match a.strip_suffix('\r') {
            Some(x) => (x, "\r"),
            None => (*a, ""),
        };
        let sep = if a_body.ends_with(':') { "" } else { "," };
        assert_eq!(
            *b,
            format!("{a_body}{sep}{m}{cr}"),
            "line {} changed beyond its member: {old:?} -> {new:?}",
            i + 1
        );
    }
}

// ---- passwd, /proc/<pid>/status, uid_map ----

/// Every entry comes from one line; entries written back canonically parse
/// to the same; `by_uid` finds the first.
pub fn passwd(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let entries = passwd::parse(&text);
    assert!(entries.len() <= text.split('\n').count());
    for e in &entries {
        assert!(!e.name.is_empty() && !e.name.contains([':', '\n']), "{e:?}");
        let first = entries.iter().find(|x| x.uid == e.uid);
        let found = passwd::by_uid(&entries, e.uid);
        assert!(
            found.zip(first).is_some_and(|(a, b)| std::ptr::eq(a, b)),
            "by_uid({}) is not the first entry with it",
            e.uid
        );
    }
    let canonical: String = entries
        .iter()
        .map(|e| format!("{}:x:{}:{}::/:/bin/sh\n", e.name, e.uid, e.gid))
        .collect();
    assert_eq!(passwd::parse(&canonical), entries, "{canonical:?}");
}

fn render_status(s: &ProcStatus) -> String {
    let join = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join("\t");
    format!(
        "Name:\t{}\nPPid:\t{}\nUid:\t{}\nGid:\t{}\nGroups:\t{}\nNSpid:\t{}\n",
        s.name,
        s.ppid,
        join(&s.uid),
        join(&s.gid),
        join(&s.groups),
        join(&s.nspid)
    )
}

/// A status that parses renders back to the same; an `IdMap` that parses
/// maps each ID by the first range holding it; runtime idmap lines never
/// map host ID 0.
pub fn proc_status(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(s) = runtime::parse_status(&text) {
        // A name with a line break or surrounding space cannot come back.
        if !s.name.contains(['\n', '\r']) && s.name.trim() == s.name {
            let again = runtime::parse_status(&render_status(&s));
            assert_eq!(again.as_ref(), Some(&s), "{:?}", render_status(&s));
        }
    }
    if let Some(m) = IdMap::parse(&text) {
        let probes = m.0.iter().flat_map(|r| {
            [
                r.inside,
                r.outside,
                r.inside.saturating_add(r.count.saturating_sub(1)),
                r.outside.saturating_add(r.count),
            ]
        });
        for x in probes {
            let first = |from: fn(&runtime::MapRange) -> u32, to: fn(&runtime::MapRange) -> u32| {
                m.0.iter().find_map(|r| {
                    let off = u64::from(x).checked_sub(u64::from(from(r)))?;
                    (off < u64::from(r.count))
                        .then(|| u32::try_from(u64::from(to(r)) + off).ok())?
                })
            };
            assert_eq!(
                m.to_host(x),
                first(|r| r.inside, |r| r.outside),
                "{m:?} {x}"
            );
            assert_eq!(
                m.to_inside(x),
                first(|r| r.outside, |r| r.inside),
                "{m:?} {x}"
            );
        }
    }
    for line in text.lines() {
        if let Ok(r) = runtime::parse_runtime_idmap(line) {
            assert!(r.host != 0 && (r.uid || r.gid), "{line:?}");
            assert!(runtime::is_runtime_idmap(line), "{line:?}");
        }
    }
}

// ---- policy and state ----

/// A policy that parses names its lines right and declares devices the
/// planner can list; an error names the file.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let p = match Policy::parse("p.toml", text) {
        Ok(p) => p,
        Err(e) => {
            assert!(e.starts_with("p.toml"), "{e}");
            return;
        }
    };
    for l in &p.idmap {
        let pos = l.span().start;
        assert_eq!(p.line_of(pos), crate::model::policy::line_of(text, pos));
        let _ = RawIdmap::parse(l.get_ref());
        let _ = runtime::parse_runtime_idmap(l.get_ref());
    }
    let declared = crate::model::device::declared(&PveConfig::parse(""), Some(&p));
    for d in &declared {
        assert!(p.devices.iter().any(|t| *t.path.get_ref() == d.path));
        let _ = crate::model::device::check_path(&d.path);
        let _ = crate::model::device::check_container_path(&d.ct_path);
    }
}

/// A state that parses renders to text that parses to the same state, and
/// rendering is stable.
pub fn state(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(s) = State::parse(text) else {
        return;
    };
    let out = s.render();
    let again = State::parse(&out).unwrap_or_else(|e| panic!("{out:?} does not parse: {e}"));
    // Rendering writes the current version (a version-1 state is migrated).
    let mut s = s;
    s.version = crate::model::state::STATE_VERSION;
    assert_eq!(again, s, "{out}");
    assert_eq!(again.render(), out);
}

// ---- the pre-start planner ----

/// The LXC config Proxmox generates from `conf` (the parts the planner
/// reads): the default map when user-namespaced without `lxc.idmap`, then
/// the raw keys in order.
pub fn generated_lxc(conf: &PveConfig, vmid: u32) -> String {
    let mut out = String::from("lxc.arch = amd64\n");
    if conf.userns() && conf.idmap_lines().is_empty() {
        out.push_str("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n");
    }
    out.push_str(&format!("lxc.rootfs.path = /var/lib/lxc/{vmid}/rootfs\n"));
    for (k, v) in conf.lxc_entries() {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

/// One device line: `PATH<TAB>KIND[ MAJOR MINOR UID GID MODE[ RESOLVED]]`,
/// KIND `c`, `b`, `f` (not a device), `missing` or `err`.
fn device_fact(line: &str) -> Option<DeviceFact> {
    let (path, rest) = line.split_once('\t')?;
    let mut f = rest.split(' ');
    let kind = match f.next()? {
        "missing" => {
            return Some(DeviceFact {
                path: path.into(),
                node: Ok(None),
            })
        }
        "err" => {
            return Some(DeviceFact {
                path: path.into(),
                node: Err("too many links".into()),
            })
        }
        "c" => NodeKind::Char,
        "b" => NodeKind::Block,
        _ => NodeKind::NotDevice,
    };
    let mut num = || f.next().and_then(|n| n.parse::<u32>().ok());
    let (major, minor, uid, gid) = (num()?, num()?, num()?, num()?);
    let mode = u32::from_str_radix(f.next()?, 8).ok()? & 0o7777;
    let resolved = f.next().map_or_else(|| path.to_string(), str::to_string);
    Some(DeviceFact {
        path: path.into(),
        node: Ok(Some(Node {
            resolved,
            kind,
            major,
            minor,
            uid,
            gid,
            mode,
        })),
    })
}

/// The planner's inputs from a multi-part input: 0 the container config,
/// 1 the policy (empty: none), 2 `/etc/subuid`, 3 `/etc/subgid` (`-`
/// alone: absent), 4 device nodes ([`device_fact`]; a line `exe PATH` lets
/// first boot use a mount hook), 5 the state JSON (empty: none), 6 the
/// generated LXC config (no section: generated from the config as Proxmox
/// would, [`generated_lxc`]). `None` where pre-start would not plan: a
/// policy that does not parse or is disabled.
pub fn prestart_facts(data: &[u8]) -> Option<Facts> {
    let parts = sections(data);
    let vmid = 105;
    let conf = PveConfig::parse(section(&parts, 0));
    let mut f = Facts::minimal(vmid, "/etc/pve/lxc/105.conf", conf);
    let policy_text = section(&parts, 1);
    if !policy_text.is_empty() {
        let p = Policy::parse("/etc/pve/pct-passthrough/105.toml", policy_text).ok()?;
        if !p.enabled {
            return None;
        }
        f.policy = Some(p);
        f.policy_file = HostFile::new(
            "/etc/pve/pct-passthrough/105.toml",
            Some(policy_text.into()),
        );
    }
    let host = |s: &str| (s != "-").then(|| s.to_string());
    f.subuid.text = host(section(&parts, 2));
    f.subgid.text = host(section(&parts, 3));
    for line in section(&parts, 4).lines() {
        if let Some(exe) = line.strip_prefix("exe ") {
            f.mount_hook_exe = Ok(exe.to_string());
        } else if let Some(d) = device_fact(line) {
            f.devices.push(d);
        }
    }
    f.state = State::parse(section(&parts, 5)).ok();
    f.lxc_config.text = Some(match parts.get(6) {
        Some(t) => t.clone(),
        None => generated_lxc(&f.conf, vmid),
    });
    Some(f)
}

/// Applies a decision's file changes to the facts, as pre-start writes them.
pub fn apply(facts: &Facts, d: &Decision) -> Facts {
    facts.after(d).unwrap_or_else(|e| panic!("{e}"))
}

fn summary(d: &Decision) -> String {
    let mut s = String::new();
    if let Some(r) = &d.refusal {
        s.push_str(&format!("refusal: {r}\n"));
    }
    for c in &d.changes {
        s.push_str(&format!(
            "{:?} ({}):\n--- old\n{}\n+++ new\n{}\n",
            c.target,
            c.reasons.join("; "),
            c.old.as_deref().unwrap_or("(none)"),
            c.new
        ));
    }
    s
}

/// The pre-start planner: decide on the facts; a decision keeps every byte
/// after the config's main section, only appends to `/etc/subuid` and
/// `/etc/subgid`, and writes the state before the config; applied, it is a
/// fixed point: deciding again refuses nothing and changes nothing, also
/// when Proxmox regenerates the LXC config from the new config.
pub fn prestart(data: &[u8]) {
    let Some(f) = prestart_facts(data) else {
        return;
    };
    let d = prestart::decide(&f);
    if d.refusal.is_some() {
        assert!(
            d.changes.is_empty(),
            "a refusal with changes: {}",
            summary(&d)
        );
        return;
    }
    let mut state_at = None;
    for (i, c) in d.changes.iter().enumerate() {
        match c.target {
            FileTarget::PveConf => {
                let old = c.old.as_deref().unwrap_or("");
                let tail = &old[pveconf::main_section(old).len()..];
                assert!(
                    c.new.ends_with(tail),
                    "the config edit touched bytes after the main section: {}",
                    summary(&d)
                );
                if let Some(owned) = state_at {
                    assert!(owned < i);
                }
            }
            FileTarget::Subuid | FileTarget::Subgid => {
                let old = c.old.as_deref().unwrap_or("");
                let prefix = if old.is_empty() || old.ends_with('\n') {
                    old.to_string()
                } else {
                    format!("{old}\n")
                };
                assert!(c.new.starts_with(&prefix), "not an append: {}", summary(&d));
            }
            FileTarget::State | FileTarget::StateInterim => {
                state_at.get_or_insert(i);
            }
            FileTarget::LxcConfig => {}
        }
    }
    if let Some(map) = &d.idmap {
        assert_eq!(idmap::validate(map), Ok(()), "{}", summary(&d));
    }
    let f1 = apply(&f, &d);
    let d2 = prestart::decide(&f1);
    assert!(
        d2.refusal.is_none() && d2.changes.is_empty(),
        "not a fixed point.\nfirst decision:\n{}\nsecond decision:\n{}",
        summary(&d),
        summary(&d2)
    );
    // A generated LXC config is generated again from the new config, after
    // a start whose shift hook (if the map changed) did its work.
    if data_has_no_lxc_section(data) {
        let mut f2 = f1.after_shift();
        f2.lxc_config.text = Some(generated_lxc(&f1.conf, f1.vmid));
        // The generated config is per start: patching it again (the map,
        // rules, this start's private nodes) is expected; nothing else may
        // change, and the patched config is itself a fixed point.
        let d3 = prestart::decide(&f2);
        assert!(
            d3.refusal.is_none()
                && d3.changes.iter().all(|c| c.target == FileTarget::LxcConfig),
            "not a fixed point once Proxmox regenerates the LXC config.\nfirst decision:\n{}\nsecond decision:\n{}",
            summary(&d),
            summary(&d3)
        );
        let d4 = prestart::decide(&apply(&f2, &d3));
        assert!(
            d4.refusal.is_none() && d4.changes.is_empty(),
            "the patched LXC config is not a fixed point.\nfirst decision:\n{}\nthird decision:\n{}",
            summary(&d3),
            summary(&d4)
        );
    }
}

fn data_has_no_lxc_section(data: &[u8]) -> bool {
    sections(data).len() <= 6
}

/// Every check by target name, as `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/` call them.
/// One check: panics when an invariant breaks on this input.
pub type Check = fn(&[u8]);

pub const TARGETS: &[(&str, Check)] = &[
    ("pveconf", pveconf),
    ("idmap", idmap),
    ("subid", subid),
    ("group", group),
    ("passwd", passwd),
    ("proc_status", proc_status),
    ("policy", policy),
    ("state", state),
    ("prestart", prestart),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks hold on hand-written inputs of each shape.
    #[test]
    fn each_check_takes_a_typical_input() {
        pveconf(b"unprivileged: 1\ndev0: /dev/ttyUSB0,gid=20\n\n[snap]\nmemory: 5\n");
        idmap(b"u 0 100000 65536\ng 0 100000 65536\ngid 20 20\nboth 1000-1001 1000-1001\n");
        subid(b"root:100000:65536\n%%\n20 1\n100000 70000\n");
        group(b"root:x:0:\ndialout:x:20:\n%%\n-\n%%\n20 dialout\n44 video\n%%\nsvc\n");
        passwd(b"root:x:0:0:root:/root:/bin/sh\nsvc:x:1000:1000::/:/bin/sh\n");
        proc_status(b"Name:\tnode\nPPid:\t1\nUid:\t1 1 1 1\nGid:\t2 2 2 2\nGroups:\t20\n");
        policy(b"idmap = [\"gid 44 44\"]\n[[device]]\npath = \"/dev/ttyUSB0\"\n");
        state(State::new(105).render().as_bytes());
        prestart(b"unprivileged: 1\nlxc.mount.entry: /dev/ttyUSB0 dev/ttyUSB0 none bind,optional,create=file\n%%\n\n%%\nroot:100000:65536\n%%\nroot:100000:65536\n%%\n/dev/ttyUSB0\tc 188 0 0 20 660\n");
    }
}
