//! Every config in `../shared/fixtures/pve-verdicts/` next to what real
//! Proxmox (pve-container 6.1.10, pve-common 9.2.1, unmodified) made of it
//! (issue 13): the tool reads each fact as Proxmox read it, and a real
//! pre-start on a temp root with a bound stick never refuses a config
//! Proxmox starts (unless the tool's own job is impossible, and then it says
//! why), changes no byte outside the main section, and adds no line Proxmox
//! would reject or warn about.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pct_passthrough::model::doctor::effective_map;
use pct_passthrough::model::idmap::{lookup, pve_default, IdKind, IdmapEntry};
use pct_passthrough::model::pveconf::{
    self, lxc_key, DevEntry, LineKind, LxcKey, PveConfig, Section,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");
const STICK: &str = "/dev/serial/by-id/usb-TEST_X-if00-port0";
const CONF: &str = "/etc/pve/lxc/100.conf";

/// Cases whose pre-start part is known to fail, each with the reason (none
/// today). Listed cases must still fail (so the list only shrinks as fixes
/// land); every other case must pass.
const EXPECTED_FAILURES: &[(&str, &str)] = &[];

fn corpus_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/pve-verdicts");
    assert!(
        dir.join("verdicts.jsonl").is_file() && dir.join("cases").is_dir(),
        "the Proxmox verdict corpus is missing: expected {}/verdicts.jsonl and cases/ (issue 13); this test cannot run without it",
        dir.display()
    );
    dir
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    v: Value,
}

fn cases() -> Vec<Case> {
    let dir = corpus_dir();
    let jsonl = fs::read_to_string(dir.join("verdicts.jsonl")).unwrap();
    let out: Vec<Case> = jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let name = v["case"].as_str().unwrap().to_string();
            let path = dir.join("cases").join(format!("{name}.conf"));
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Case { name, bytes, v }
        })
        .collect();
    assert_eq!(out.len(), 269, "the corpus has 269 cases");
    out
}

/// The verdicts hold Perl's byte strings with each byte as one code point
/// (Latin-1); a string Proxmox decoded as UTF-8 (the description) has
/// larger ones. Both against ours, in the text form.
fn same_str(pve: &str, ours: &str) -> bool {
    let bytes: Option<Vec<u8>> = pve.chars().map(|c| u8::try_from(c).ok()).collect();
    match bytes {
        Some(b) => b == pveconf::text_to_bytes(ours).as_ref() || pve == ours,
        None => pve == ours,
    }
}

/// A value as Proxmox's loader stored it, against ours (text form): a
/// number is what `check_type` made of an integer or boolean.
fn same_value(pve: &Value, ours: &str) -> bool {
    match pve {
        Value::String(s) => same_str(s, ours),
        Value::Number(n) => {
            let n = n.as_u64();
            ours.bytes().all(|b| b.is_ascii_digit()) && ours.parse::<u64>().ok() == n
                || pveconf::parse_bool(ours).map(u64::from) == n
        }
        _ => false,
    }
}

fn compare_keys(what: &str, pve: &Value, ours: &BTreeMap<String, String>, bad: &mut Vec<String>) {
    let pve = pve.as_object().unwrap();
    let pk: BTreeSet<&str> = pve.keys().map(String::as_str).collect();
    let ok: BTreeSet<&str> = ours.keys().map(String::as_str).collect();
    if pk != ok {
        bad.push(format!("{what} keys: proxmox {pk:?}, ours {ok:?}"));
        return;
    }
    for (k, v) in pve {
        // Proxmox decodes the description as UTF-8; its presence is the fact.
        if k != "description" && !same_value(v, &ours[k]) {
            bad.push(format!("{what} {k}: proxmox {v}, ours {:?}", ours[k]));
        }
    }
}

/// What pct-passthrough reads of one config, against Proxmox's verdict.
fn reading_mismatches(c: &Case) -> Vec<String> {
    let conf = PveConfig::parse_bytes(&c.bytes);
    let v = &c.v;
    let mut bad = Vec::new();
    if conf.unprivileged() != v["unprivileged"].as_bool().unwrap() {
        bad.push(format!(
            "unprivileged: proxmox {}, ours {}",
            v["unprivileged"],
            conf.unprivileged()
        ));
    }
    if conf.userns() != v["userns"].as_bool().unwrap() {
        bad.push(format!(
            "userns: proxmox {}, ours {}",
            v["userns"],
            conf.userns()
        ));
    }
    match (effective_map(&conf), v["idmap_parse_error"].as_str()) {
        (Err(_), Some(_)) => {}
        (Ok(map), None) => {
            let ours: Vec<String> = map
                .unwrap_or_default()
                .iter()
                .map(IdmapEntry::to_string)
                .collect();
            let pve: Vec<String> = v["idmap"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    // parse_id_maps keeps the numbers as written.
                    let f: Vec<&str> = e.as_str().unwrap().split(' ').collect();
                    let n = |s: &str| s.parse::<u64>().unwrap().to_string();
                    format!("{} {} {} {}", f[0], n(f[1]), n(f[2]), n(f[3]))
                })
                .collect();
            if ours != pve {
                bad.push(format!("idmap: proxmox {pve:?}, ours {ours:?}"));
            }
        }
        (ours, pve) => bad.push(format!("idmap: proxmox error {pve:?}, ours {ours:?}")),
    }
    let lxc: Vec<(String, String)> = v["lxc"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap().to_string(),
                e[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ours: Vec<(String, String)> = conf
        .lxc_entries()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if ours.len() != lxc.len()
        || ours
            .iter()
            .zip(&lxc)
            .any(|(o, p)| o.0 != p.0 || !same_str(&p.1, &o.1))
    {
        bad.push(format!("lxc: proxmox {lxc:?}, ours {ours:?}"));
    }
    compare_keys(
        "main",
        &v["main"],
        &conf.section_keys(&Section::Main),
        &mut bad,
    );
    compare_keys(
        "pending",
        &v["pending"],
        &conf.section_keys(&Section::Pending),
        &mut bad,
    );
    let snaps: BTreeSet<&str> = conf.snapshot_names().into_iter().collect();
    let pve: BTreeSet<&str> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    if snaps != pve {
        bad.push(format!("snapshots: proxmox {pve:?}, ours {snaps:?}"));
    }
    // Each line's section, against the test's own reading of the headers.
    let ours: Vec<Section> = conf.lines_with_sections().map(|(s, _)| s).collect();
    if ours != oracle_sections(&c.bytes) {
        bad.push("the sections of the lines differ from Perl's header rules".into());
    }
    bad
}

/// Perl's `\s` on bytes.
fn space(b: u8) -> bool {
    b" \t\n\x0b\x0c\r".contains(&b)
}

/// `^\[pve:pending\]\s*$`/i and `^\[([a-z][a-z0-9_\-]+)\]\s*$`/i, written
/// here again as the test's oracle.
fn oracle_header(line: &[u8]) -> Option<Section> {
    let end = line.iter().rposition(|&b| !space(b)).map_or(0, |i| i + 1);
    let inner = line[..end].strip_prefix(b"[")?.strip_suffix(b"]")?;
    if inner.eq_ignore_ascii_case(b"pve:pending") {
        return Some(Section::Pending);
    }
    let name_ok = inner.len() >= 2
        && inner[0].is_ascii_alphabetic()
        && inner
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-');
    name_ok.then(|| Section::Snapshot(String::from_utf8_lossy(inner).into_owned()))
}

/// The section of each line of `bytes` (split on `\n`, as Proxmox does).
fn oracle_sections(bytes: &[u8]) -> Vec<Section> {
    let mut section = Section::Main;
    let mut out = Vec::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return out;
    }
    for line in body.split(|&b| b == b'\n') {
        if let Some(s) = oracle_header(line) {
            section = s;
        }
        out.push(section.clone());
    }
    out
}

/// Index of the first byte of the first header line (the end of the main
/// section), by the oracle.
fn main_end(bytes: &[u8]) -> usize {
    let mut at = 0;
    for line in bytes.split(|&b| b == b'\n') {
        if oracle_header(line).is_some() {
            return at;
        }
        at += line.len() + 1;
    }
    bytes.len()
}

#[test]
fn the_tool_reads_every_config_as_proxmox_does() {
    let mut failures = Vec::new();
    for c in cases() {
        let bad = reading_mismatches(&c);
        if !bad.is_empty() {
            failures.push(format!("{}:\n  {}", c.name, bad.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 269 cases read differently:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The generated LXC config Proxmox's `update_lxc_config` writes for the
/// verdict (the parts the tool reads): includes, the default map when
/// user-namespaced without `lxc.idmap`, then the raw keys in order.
fn generated(v: &Value) -> String {
    let userns = v["userns"].as_bool().unwrap();
    let lxc = v["lxc"].as_array().unwrap();
    let mut out =
        String::from("lxc.arch = amd64\nlxc.include = /usr/share/lxc/config/common.conf\n");
    if userns {
        out.push_str(
            "lxc.include = /usr/share/lxc/config/userns.conf\nlxc.cgroup2.devices.allow = a\n",
        );
        if !lxc.iter().any(|e| e[0] == "lxc.idmap") {
            out.push_str("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n");
        }
    }
    out.push_str("lxc.rootfs.path = /var/lib/lxc/100/rootfs\n");
    for e in lxc {
        let (k, val) = (e[0].as_str().unwrap(), e[1].as_str().unwrap());
        // Latin-1 code points back to bytes would not be UTF-8; the tool's
        // reading of this file is not what these cases test.
        if val.is_ascii() {
            out.push_str(&format!("{k} = {val}\n"));
        }
    }
    out
}

/// The case's config with a bound stick: as written if it binds one, else
/// with the bind as its first line (always in the main section).
fn with_stick(bytes: &[u8]) -> Vec<u8> {
    if bytes.windows(STICK.len()).any(|w| w == STICK.as_bytes()) {
        return bytes.to_vec();
    }
    let mut out = format!("lxc.mount.entry: {STICK} dev/ttyUSB0 none bind,optional,create=file\n")
        .into_bytes();
    out.extend_from_slice(bytes);
    out
}

/// Proxmox starts this config (normal load), as far as the verdict says:
/// an unparsable `lxc.idmap` fails the LXC pre-start hook, and a `devN`
/// Proxmox cannot parse fails `update_lxc_config`.
/// Overlapping `lxc.idmap` lines (`validate_id_maps`' error, which
/// `vm_start` only warns about) fail too: the kernel refuses a uid_map
/// whose extents overlap (EINVAL).
fn proxmox_starts(c: &Case) -> bool {
    c.v["idmap_parse_error"].is_null()
        && c.v["idmap_validate_error"].is_null()
        && !c.v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("value of 'dev")))
}

/// Lines in `after`'s main section that are not in `before`'s (as a
/// multiset), with whatever Proxmox would warn about each.
fn new_line_problems(before: &[u8], after: &[u8]) -> Vec<String> {
    let lines = |b: &[u8]| -> Vec<Vec<u8>> {
        b[..main_end(b)]
            .split(|&x| x == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
            .collect()
    };
    let mut old = lines(before);
    let mut bad = Vec::new();
    for line in lines(after) {
        if let Some(i) = old.iter().position(|o| *o == line) {
            old.remove(i);
            continue;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let c = PveConfig::parse_bytes(&line);
        let ok = match c.lines().first().map(|l| &l.kind) {
            None | Some(LineKind::Blank) => true,
            // Keys Proxmox keeps without a warning (not deprecated ones such
            // as lxc.id_map or lxc.cgroup.*), with a value it reads.
            Some(LineKind::Raw { key, value }) => {
                lxc_key(key) == LxcKey::Valid
                    && [
                        "lxc.idmap",
                        "lxc.mount.entry",
                        "lxc.hook.",
                        "lxc.cgroup2.",
                        "lxc.init.",
                    ]
                    .iter()
                    .any(|k| key.starts_with(k))
                    && (key != "lxc.idmap" || IdmapEntry::parse(value).is_ok())
            }
            Some(LineKind::Key { key, value }) => key
                .strip_prefix("dev")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n < 256 && DevEntry::parse(n, value).is_ok()),
            _ => false,
        };
        if !ok {
            bad.push(format!("added a line Proxmox would warn about: {text:?}"));
        }
    }
    bad
}

struct Run {
    ok: bool,
    stderr: String,
    before: Vec<u8>,
    after: Vec<u8>,
}

fn pre_start(c: &Case) -> Run {
    run_pre_start(with_stick(&c.bytes), &c.v)
}

/// pre-start of container 100 on a fresh temp root with `conf` and a stick.
fn run_pre_start(before: Vec<u8>, v: &Value) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    };
    write(&CONF[1..], &before);
    write("etc/subuid", b"root:100000:65536\n");
    write("etc/subgid", b"root:100000:65536\n");
    write("var/lib/lxc/100/config", generated(v).as_bytes());
    // The stick's node as udev makes it: char 188:0, root:dialout 0660
    // (needs root, as every test run here has).
    {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        fs::create_dir_all(root.join("dev")).unwrap();
        let node = root.join("dev/ttyUSB0");
        mknod(
            &node,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o660),
            makedev(188, 0),
        )
        .unwrap_or_else(|e| panic!("mknod {}: {e} (this test needs root)", node.display()));
        std::os::unix::fs::chown(&node, Some(0), Some(20)).unwrap();
    }
    fs::create_dir_all(root.join("dev/serial/by-id")).unwrap();
    symlink("../../ttyUSB0", root.join(&STICK[1..])).unwrap();
    let o = Command::new(BIN)
        .args(["100", "pre-start"])
        .env("PCT_PASSTHROUGH_ROOT", root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        ok: o.status.success(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        before,
        after: fs::read(root.join(&CONF[1..])).unwrap(),
    }
}

/// The `lxc.idmap` values a refusal suggests instead of a person's lines
/// (`fix: replace them with: lxc.idmap: A, lxc.idmap: B; or ...`).
fn suggested_map(stderr: &str) -> Option<Vec<String>> {
    let rest = stderr.split_once("fix: replace them with: ")?.1;
    let list = rest.split_once("; or").map_or(rest, |(l, _)| l);
    list.trim()
        .split(", ")
        .map(|l| l.strip_prefix("lxc.idmap: ").map(str::to_string))
        .collect()
}

/// The main section's `lxc.idmap` lines are exactly Proxmox's default map.
fn copies_the_default_map(conf: &[u8]) -> bool {
    let c = PveConfig::parse_bytes(conf);
    let mut map: Vec<Option<IdmapEntry>> = c
        .idmap_lines()
        .iter()
        .map(|l| IdmapEntry::parse(l).ok())
        .collect();
    map.sort();
    let mut default: Vec<Option<IdmapEntry>> = pve_default().into_iter().map(Some).collect();
    default.sort();
    map == default
}

/// `conf` with its main-section `lxc.idmap` lines replaced by `map`.
fn with_map(conf: &[u8], map: &[String]) -> Vec<u8> {
    let end = main_end(conf);
    let mut out: Vec<u8> = map
        .iter()
        .flat_map(|m| format!("lxc.idmap: {m}\n").into_bytes())
        .collect();
    for line in conf[..end].split_inclusive(|&b| b == b'\n') {
        let is_idmap = matches!(
            PveConfig::parse_bytes(line).lines().first().map(|l| &l.kind),
            Some(LineKind::Raw { key, .. }) if key == "lxc.idmap"
        );
        if !is_idmap {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&conf[end..]);
    out
}

fn pre_start_problems(c: &Case, r: &Run) -> Vec<String> {
    let mut bad = Vec::new();
    if !r.ok {
        let why = r.stderr.trim();
        if !r.stderr.contains(CONF) {
            bad.push(format!("refused without naming the config: {why}"));
        } else if copies_the_default_map(&r.before) {
            // Those lines mean what Proxmox does without them: the tool can
            // do its job by adopting them.
            bad.push(format!(
                "refused a person's copy of Proxmox's default map: {why}"
            ));
        } else if let Some(map) = suggested_map(&r.stderr) {
            // The tool's job is impossible without changing a person's
            // lines; what it suggests must then pass and start.
            let again = run_pre_start(with_map(&r.before, &map), &c.v);
            if !again.ok {
                bad.push(format!(
                    "the refusal's fix {map:?} is refused in turn: {}",
                    again.stderr.trim()
                ));
            }
        } else if proxmox_starts(c) {
            bad.push(format!("refused a config Proxmox starts: {why}"));
        }
    }
    let (b, a) = (&r.before, &r.after);
    if b[main_end(b)..] != a[main_end(a)..] {
        bad.push("changed a byte outside the main section".into());
    }
    bad.extend(new_line_problems(b, a));
    let (old, new) = (PveConfig::parse_bytes(b), PveConfig::parse_bytes(a));
    if old.unprivileged() != new.unprivileged() {
        bad.push("changed whether the container is unprivileged".into());
    }
    if effective_map(&old).is_ok() && effective_map(&new).is_err() {
        bad.push("left an ID map Proxmox cannot parse".into());
    }
    // The job: a started user-namespaced container reaches the stick's
    // group (dialout, 20) through its map.
    let userns = c.v["userns"].as_bool().unwrap();
    if new.userns() != userns {
        bad.push(format!(
            "user-namespaced: proxmox {userns}, after pre-start {}",
            new.userns()
        ));
    }
    if r.ok && proxmox_starts(c) && userns {
        let gid20 = effective_map(&new)
            .ok()
            .flatten()
            .and_then(|m| lookup(&m, IdKind::Gid, 20));
        if gid20 != Some(20) {
            bad.push(format!(
                "started without container gid 20 -> host gid 20 (got {gid20:?})"
            ));
        }
    }
    bad
}

#[test]
fn pre_start_on_every_config_keeps_what_proxmox_starts() {
    let mut failures = Vec::new();
    let mut unexpected_passes = Vec::new();
    for c in cases() {
        let r = pre_start(&c);
        let bad = pre_start_problems(&c, &r);
        let expected = EXPECTED_FAILURES.iter().find(|(n, _)| *n == c.name);
        match (bad.is_empty(), expected) {
            (true, Some((n, why))) => unexpected_passes.push(format!("{n} ({why})")),
            (false, None) => failures.push(format!("{}:\n  {}", c.name, bad.join("\n  "))),
            _ => {}
        }
    }
    assert!(
        failures.is_empty() && unexpected_passes.is_empty(),
        "{} cases failed:\n{}\n\nexpected to fail but passed (remove them from EXPECTED_FAILURES):\n{}",
        failures.len(),
        failures.join("\n"),
        unexpected_passes.join("\n")
    );
}
