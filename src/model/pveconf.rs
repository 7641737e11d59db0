//! The Proxmox container config (`/etc/pve/lxc/<vmid>.conf`), read the way
//! pve-container's `parse_pct_config` reads it, kept byte for byte so that
//! `render(parse(s)) == s`. Edits touch the main section only.

use std::fmt;

/// How a line ended in the original text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eol {
    Lf,
    CrLf,
    /// The last line of a file without a final newline.
    None,
}

impl Eol {
    fn as_str(self) -> &'static str {
        match self {
            Eol::Lf => "\n",
            Eol::CrLf => "\r\n",
            Eol::None => "",
        }
    }
}

/// What a line means to pve-container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    /// Empty or only whitespace: skipped by PVE.
    Blank,
    /// `#…`: part of the description.
    Comment,
    /// `[pve:pending]`.
    PendingHeader,
    /// `[name]`: a snapshot.
    SnapshotHeader(String),
    /// `key: value` with a PVE key such as `dev0` or `unprivileged`.
    Key { key: String, value: String },
    /// `lxc.*: value` or `lxc.* = value`.
    Raw { key: String, value: String },
    /// Anything else: PVE warns and ignores it; we keep it verbatim.
    Unknown,
}

/// One line: its text without the line ending, and the ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    pub eol: Eol,
    pub kind: LineKind,
}

impl Line {
    fn parse(text: &str, eol: Eol) -> Line {
        Line {
            kind: classify(text),
            text: text.to_string(),
            eol,
        }
    }
}

/// Which section a line belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Section {
    Main,
    Snapshot(String),
    Pending,
}

/// A parsed container config. Rendering gives back the exact input bytes,
/// plus whatever edits were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PveConfig {
    lines: Vec<Line>,
}

/// A `devN:` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevEntry {
    pub index: u32,
    pub path: String,
    pub uid: Option<String>,
    pub gid: Option<String>,
    pub mode: Option<String>,
    pub deny_write: bool,
    /// The whole value as written.
    pub value: String,
}

/// An `mpN:` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpEntry {
    pub index: u32,
    pub volume: String,
    pub mp: Option<String>,
    pub idmap: Option<String>,
    pub value: String,
}

/// An `lxc.mount.entry` line, split like an fstab line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub options: Vec<String>,
    pub value: String,
}

impl PveConfig {
    /// Parses config text. Never fails: lines PVE would not understand are
    /// kept as [`LineKind::Unknown`].
    pub fn parse(text: &str) -> PveConfig {
        let mut lines = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('\n') {
                Some(pos) => {
                    let (body, eol) = match rest[..pos].strip_suffix('\r') {
                        Some(b) => (b, Eol::CrLf),
                        None => (&rest[..pos], Eol::Lf),
                    };
                    lines.push(Line::parse(body, eol));
                    rest = &rest[pos + 1..];
                }
                None => {
                    lines.push(Line::parse(rest, Eol::None));
                    rest = "";
                }
            }
        }
        PveConfig { lines }
    }

    /// The config as text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.lines.iter().map(|l| l.text.len() + 2).sum());
        for line in &self.lines {
            out.push_str(&line.text);
            out.push_str(line.eol.as_str());
        }
        out
    }

    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// Each line with the section it is in.
    pub fn lines_with_sections(&self) -> impl Iterator<Item = (Section, &Line)> {
        let mut section = Section::Main;
        self.lines.iter().map(move |line| {
            match &line.kind {
                LineKind::PendingHeader => section = Section::Pending,
                LineKind::SnapshotHeader(name) => section = Section::Snapshot(name.clone()),
                _ => {}
            }
            (section.clone(), line)
        })
    }

    /// Index one past the last line of the main section.
    fn main_end(&self) -> usize {
        self.lines
            .iter()
            .position(|l| {
                matches!(
                    l.kind,
                    LineKind::PendingHeader | LineKind::SnapshotHeader(_)
                )
            })
            .unwrap_or(self.lines.len())
    }

    fn main_lines(&self) -> &[Line] {
        &self.lines[..self.main_end()]
    }

    /// The last value of a PVE key in the main section (PVE: the last wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.main_lines().iter().rev().find_map(|l| match &l.kind {
            LineKind::Key { key: k, value } if k == key => Some(value.as_str()),
            _ => None,
        })
    }

    /// Every value of a raw `lxc.*` key in the main section, in order.
    pub fn raw_values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.main_lines().iter().filter_map(move |l| match &l.kind {
            LineKind::Raw { key: k, value } if k == key => Some(value.as_str()),
            _ => None,
        })
    }

    /// `lxc.idmap` values of the main section.
    pub fn idmap_lines(&self) -> Vec<&str> {
        self.raw_values("lxc.idmap").collect()
    }

    /// `lxc.cgroup2.devices.allow` values of the main section.
    pub fn cgroup2_allows(&self) -> Vec<&str> {
        self.raw_values("lxc.cgroup2.devices.allow").collect()
    }

    /// `lxc.mount.entry` values of the main section.
    pub fn mount_entries(&self) -> Vec<MountEntry> {
        self.raw_values("lxc.mount.entry")
            .filter_map(MountEntry::parse)
            .collect()
    }

    /// `unprivileged: 1`. PVE's default is privileged.
    pub fn unprivileged(&self) -> bool {
        self.get("unprivileged").is_some_and(|v| v.trim() == "1")
    }

    /// The registered hookscript volume, like `local:snippets/x`.
    pub fn hookscript(&self) -> Option<&str> {
        self.get("hookscript")
    }

    /// `devN` entries of the main section, by index. The last of duplicates wins.
    pub fn dev_entries(&self) -> Vec<DevEntry> {
        let mut out: Vec<DevEntry> = Vec::new();
        for (index, value) in self.indexed_keys("dev") {
            out.retain(|d| d.index != index);
            out.push(DevEntry::parse(index, value));
        }
        out.sort_by_key(|d| d.index);
        out
    }

    /// `mpN` entries of the main section, by index.
    pub fn mp_entries(&self) -> Vec<MpEntry> {
        let mut out: Vec<MpEntry> = Vec::new();
        for (index, value) in self.indexed_keys("mp") {
            out.retain(|d| d.index != index);
            out.push(MpEntry::parse(index, value));
        }
        out.sort_by_key(|d| d.index);
        out
    }

    fn indexed_keys<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (u32, &'a str)> + 'a {
        self.main_lines().iter().filter_map(move |l| match &l.kind {
            LineKind::Key { key, value } => {
                let digits = key.strip_prefix(prefix)?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some((digits.parse().ok()?, value.as_str()))
            }
            _ => None,
        })
    }

    /// The line ending new lines get: CRLF if the file already uses it.
    fn new_eol(&self) -> Eol {
        if self.lines.iter().any(|l| l.eol == Eol::CrLf) {
            Eol::CrLf
        } else {
            Eol::Lf
        }
    }

    /// Inserts `text` as a line at `at`, repairing a missing newline before it.
    fn insert_at(&mut self, at: usize, text: &str) {
        let eol = self.new_eol();
        if at > 0 && self.lines[at - 1].eol == Eol::None {
            self.lines[at - 1].eol = eol;
        }
        self.lines.insert(at, Line::parse(text, eol));
    }

    /// Where a new line goes in the main section: after its last non-blank
    /// line, so the blank line before the first section header stays there.
    fn main_insert_point(&self) -> usize {
        let end = self.main_end();
        self.lines[..end]
            .iter()
            .rposition(|l| l.kind != LineKind::Blank)
            .map_or(0, |i| i + 1)
    }

    /// Appends a raw `lxc.*` line (`key: value`) to the main section.
    pub fn push_raw(&mut self, key: &str, value: &str) {
        self.push_raw_all(key, [value]);
    }

    /// Appends raw `lxc.*` lines (`key: value`, in order) to the main
    /// section at once: one scan and one splice, however many lines (a loop
    /// of [`push_raw`](Self::push_raw) shifts the sections after the main
    /// one for every line).
    pub fn push_raw_all<'v>(&mut self, key: &str, values: impl IntoIterator<Item = &'v str>) {
        let at = self.main_insert_point();
        let eol = self.new_eol();
        let new: Vec<Line> = values
            .into_iter()
            .map(|v| Line::parse(&format!("{key}: {v}"), eol))
            .collect();
        if new.is_empty() {
            return;
        }
        if at > 0 && self.lines[at - 1].eol == Eol::None {
            self.lines[at - 1].eol = eol;
        }
        self.lines.splice(at..at, new);
    }

    /// Sets a PVE key in the main section: replaces its last occurrence, or
    /// inserts it after the last PVE key (PVE writes keys before raw lines).
    pub fn set_key(&mut self, key: &str, value: &str) {
        let end = self.main_end();
        let text = format!("{key}: {value}");
        let existing = self.lines[..end]
            .iter()
            .rposition(|l| matches!(&l.kind, LineKind::Key { key: k, .. } if k == key));
        if let Some(i) = existing {
            let eol = self.lines[i].eol;
            self.lines[i] = Line::parse(&text, eol);
            return;
        }
        let at = self.lines[..end]
            .iter()
            .rposition(|l| matches!(l.kind, LineKind::Key { .. } | LineKind::Comment))
            .map_or_else(|| self.main_insert_point(), |i| i + 1);
        self.insert_at(at, &text);
    }

    /// Removes main-section lines for which `pred` holds; returns how many.
    pub fn remove_main_where(&mut self, mut pred: impl FnMut(&Line) -> bool) -> usize {
        let end = self.main_end();
        let before = self.lines.len();
        let mut index = 0;
        self.lines.retain(|l| {
            let keep = index >= end || !pred(l);
            index += 1;
            keep
        });
        before - self.lines.len()
    }

    /// Removes every main-section raw line `key` whose value is `value`
    /// (compared after trimming).
    pub fn remove_raw(&mut self, key: &str, value: &str) -> usize {
        self.remove_main_where(|l| matches!(&l.kind, LineKind::Raw { key: k, value: v } if k == key && v == value.trim()))
    }
}

impl fmt::Display for PveConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// The main section of config text: everything before the first
/// `[snapshot]` or `[pve:pending]` header line, split and classified as
/// [`PveConfig::parse`] does. Enough to tell whether a container has
/// anything for the tool, without parsing its snapshots.
pub fn main_section(text: &str) -> &str {
    let mut start = 0;
    while start < text.len() {
        let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = &text[start..end];
        let body = line.strip_suffix('\r').unwrap_or(line);
        if matches!(
            section_header(body),
            Some(LineKind::PendingHeader | LineKind::SnapshotHeader(_))
        ) {
            return &text[..start];
        }
        start = end + 1;
    }
    text
}

/// The header a line is, if it is one.
fn section_header(text: &str) -> Option<LineKind> {
    let t = text.trim_end_matches(|c: char| c.is_ascii_whitespace());
    let inner = t.strip_prefix('[')?.strip_suffix(']')?;
    if inner.eq_ignore_ascii_case("pve:pending") {
        Some(LineKind::PendingHeader)
    } else if is_snapshot_name(inner) {
        Some(LineKind::SnapshotHeader(inner.to_string()))
    } else {
        None
    }
}

fn classify(text: &str) -> LineKind {
    let t = text.trim_end_matches(|c: char| c.is_ascii_whitespace());
    if t.trim_start().is_empty() {
        return LineKind::Blank;
    }
    if let Some(header) = section_header(t) {
        return header;
    }
    if t.starts_with('#') {
        return LineKind::Comment;
    }
    if let Some((key, value)) = parse_raw(t) {
        return LineKind::Raw { key, value };
    }
    if let Some((key, value)) = parse_key(t) {
        return LineKind::Key { key, value };
    }
    LineKind::Unknown
}

/// `[a-z][a-z0-9_\-]+`, case-insensitive, as PVE matches snapshot headers.
fn is_snapshot_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

/// `^(lxc\.[a-z0-9_\-\.]+)(:|\s*=)\s*(.*?)\s*$`
fn parse_raw(t: &str) -> Option<(String, String)> {
    if !t.starts_with("lxc.") {
        return None;
    }
    let key_len = t
        .bytes()
        .position(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.".contains(&c)))
        .unwrap_or(t.len());
    if key_len <= 4 {
        return None;
    }
    let key = &t[..key_len];
    let rest = &t[key_len..];
    let value = if let Some(v) = rest.strip_prefix(':') {
        v
    } else {
        rest.trim_start_matches(|c: char| c.is_ascii_whitespace())
            .strip_prefix('=')?
    };
    Some((key.to_string(), value.trim().to_string()))
}

/// `^([a-z][a-z_]*\d*):\s*(.+?)\s*$`
fn parse_key(t: &str) -> Option<(String, String)> {
    let colon = t.find(':')?;
    let key = &t[..colon];
    let b = key.as_bytes();
    if b.is_empty() || !b[0].is_ascii_lowercase() {
        return None;
    }
    let alpha_end = b
        .iter()
        .position(|c| !(c.is_ascii_lowercase() || *c == b'_'))
        .unwrap_or(b.len());
    if !b[alpha_end..].iter().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let value = t[colon + 1..].trim();
    if value.is_empty() {
        return None;
    }
    Some((key.to_string(), value.to_string()))
}

/// Splits a PVE property string `first,k=v,k2=v2` into its default value
/// (`first` or `default_key=first`) and the other pairs.
fn split_props<'a>(value: &'a str, default_key: &str) -> (String, Vec<(&'a str, &'a str)>) {
    let mut first = String::new();
    let mut props = Vec::new();
    for (i, part) in value.split(',').enumerate() {
        match part.split_once('=') {
            Some((k, v)) if k == default_key => first = v.to_string(),
            Some((k, v)) if i > 0 || k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                props.push((k, v))
            }
            _ if i == 0 => first = part.to_string(),
            _ => props.push((part, "")),
        }
    }
    (first, props)
}

impl DevEntry {
    pub fn parse(index: u32, value: &str) -> DevEntry {
        let (path, props) = split_props(value, "path");
        let get = |k: &str| {
            props
                .iter()
                .rev()
                .find(|(pk, _)| *pk == k)
                .map(|(_, v)| v.to_string())
        };
        DevEntry {
            index,
            uid: get("uid"),
            gid: get("gid"),
            mode: get("mode"),
            deny_write: get("deny-write").is_some_and(|v| v == "1"),
            path,
            value: value.to_string(),
        }
    }

    /// The value as PVE writes it.
    pub fn render(&self) -> String {
        let mut out = self.path.clone();
        if self.deny_write {
            out.push_str(",deny-write=1");
        }
        for (k, v) in [("gid", &self.gid), ("mode", &self.mode), ("uid", &self.uid)] {
            if let Some(v) = v {
                out.push_str(&format!(",{k}={v}"));
            }
        }
        out
    }
}

impl MpEntry {
    pub fn parse(index: u32, value: &str) -> MpEntry {
        let (volume, props) = split_props(value, "volume");
        let get = |k: &str| {
            props
                .iter()
                .rev()
                .find(|(pk, _)| *pk == k)
                .map(|(_, v)| v.to_string())
        };
        MpEntry {
            index,
            mp: get("mp"),
            idmap: get("idmap"),
            volume,
            value: value.to_string(),
        }
    }
}

impl MountEntry {
    /// Splits `source target fstype options [dump [pass]]`.
    pub fn parse(value: &str) -> Option<MountEntry> {
        let mut f = value.split_ascii_whitespace();
        let source = f.next()?.to_string();
        let target = f.next()?.to_string();
        let fstype = f.next().unwrap_or("none").to_string();
        let options = f
            .next()
            .map(|o| o.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        Some(MountEntry {
            source,
            target,
            fstype,
            options,
            value: value.to_string(),
        })
    }

    pub fn is_bind(&self) -> bool {
        self.options.iter().any(|o| o == "bind" || o == "rbind")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_like_pve() {
        assert_eq!(classify(""), LineKind::Blank);
        assert_eq!(classify(" \t"), LineKind::Blank);
        assert_eq!(classify("#x"), LineKind::Comment);
        assert_eq!(classify("[pve:pending]"), LineKind::PendingHeader);
        assert_eq!(classify("[PVE:Pending] "), LineKind::PendingHeader);
        assert_eq!(
            classify("[snap1]"),
            LineKind::SnapshotHeader("snap1".into())
        );
        assert_eq!(classify("[1snap]"), LineKind::Unknown);
        assert_eq!(
            classify("lxc.idmap = u 0 100000 65536 "),
            LineKind::Raw {
                key: "lxc.idmap".into(),
                value: "u 0 100000 65536".into()
            }
        );
        assert_eq!(
            classify("lxc.idmap:g 20 20 1"),
            LineKind::Raw {
                key: "lxc.idmap".into(),
                value: "g 20 20 1".into()
            }
        );
        assert_eq!(
            classify("dev0:\t/dev/ttyUSB0,gid=20\r"),
            LineKind::Key {
                key: "dev0".into(),
                value: "/dev/ttyUSB0,gid=20".into()
            }
        );
        assert_eq!(classify("Dev0: x"), LineKind::Unknown);
        assert_eq!(classify("dev0a: x"), LineKind::Unknown);
        assert_eq!(classify("memory:"), LineKind::Unknown);
        assert_eq!(classify("lxc.: x"), LineKind::Unknown);
    }

    #[test]
    fn accessors_read_the_main_section_only() {
        let c = PveConfig::parse(
            "unprivileged: 1\ndev0: /dev/ttyUSB0,gid=20,mode=0660\nmp0: /tank,mp=/data,idmap=passthrough\nlxc.idmap: u 0 100000 65536\nlxc.mount.entry: /dev/ttyACM0 dev/ttyACM0 none bind,optional,create=file\n\n[snap]\nunprivileged: 0\nlxc.idmap: g 0 1 1\n",
        );
        assert!(c.unprivileged());
        assert_eq!(c.idmap_lines(), vec!["u 0 100000 65536"]);
        let d = &c.dev_entries()[0];
        assert_eq!((d.index, d.path.as_str()), (0, "/dev/ttyUSB0"));
        assert_eq!(d.gid.as_deref(), Some("20"));
        assert_eq!(d.mode.as_deref(), Some("0660"));
        let mp = &c.mp_entries()[0];
        assert_eq!(mp.volume, "/tank");
        assert_eq!(mp.idmap.as_deref(), Some("passthrough"));
        let m = &c.mount_entries()[0];
        assert!(m.is_bind());
        assert_eq!(m.target, "dev/ttyACM0");
    }

    #[test]
    fn dev_entry_renders_like_pve() {
        let d = DevEntry::parse(1, "path=/dev/dri/renderD128,uid=0,gid=104");
        assert_eq!(d.path, "/dev/dri/renderD128");
        assert_eq!(d.render(), "/dev/dri/renderD128,gid=104,uid=0");
    }

    #[test]
    fn insert_goes_before_the_first_section_and_its_blank_line() {
        let mut c = PveConfig::parse("arch: amd64\nlxc.idmap: u 0 100000 65536\n\n[snap1]\nlxc.idmap: u 0 100000 65536\n\n[pve:pending]\nmemory: 1\n");
        c.push_raw("lxc.idmap", "g 20 20 1");
        assert_eq!(
            c.render(),
            "arch: amd64\nlxc.idmap: u 0 100000 65536\nlxc.idmap: g 20 20 1\n\n[snap1]\nlxc.idmap: u 0 100000 65536\n\n[pve:pending]\nmemory: 1\n"
        );
    }

    #[test]
    fn push_raw_all_is_push_raw_in_a_loop() {
        for text in [
            "",
            "arch: amd64",
            "arch: amd64\r\nlxc.idmap: u 0 100000 65536\r\n",
            "arch: amd64\n\n[snap1]\nmemory: 1\n\n[pve:pending]\nmemory: 2\n",
        ] {
            let values = ["u 0 100000 1000", "u 1000 1000 1", "u 1001 101001 64535"];
            let mut one_by_one = PveConfig::parse(text);
            for v in values {
                one_by_one.push_raw("lxc.idmap", v);
            }
            let mut at_once = PveConfig::parse(text);
            at_once.push_raw_all("lxc.idmap", values);
            assert_eq!(at_once, one_by_one, "{text:?}");
            let mut none = PveConfig::parse(text);
            none.push_raw_all("lxc.idmap", []);
            assert_eq!(none.render(), text);
        }
    }

    #[test]
    fn insert_repairs_a_missing_final_newline_and_keeps_crlf() {
        let mut c = PveConfig::parse("arch: amd64");
        c.push_raw("lxc.idmap", "g 20 20 1");
        assert_eq!(c.render(), "arch: amd64\nlxc.idmap: g 20 20 1\n");
        let mut c = PveConfig::parse("arch: amd64\r\n");
        c.push_raw("lxc.idmap", "g 20 20 1");
        assert_eq!(c.render(), "arch: amd64\r\nlxc.idmap: g 20 20 1\r\n");
    }

    #[test]
    fn set_key_replaces_or_inserts_before_raw_lines() {
        let mut c = PveConfig::parse("arch: amd64\nlxc.idmap: u 0 100000 65536\n");
        c.set_key("dev0", "/dev/ttyUSB0,gid=20");
        assert_eq!(
            c.render(),
            "arch: amd64\ndev0: /dev/ttyUSB0,gid=20\nlxc.idmap: u 0 100000 65536\n"
        );
        c.set_key("dev0", "/dev/ttyUSB1");
        assert_eq!(
            c.render(),
            "arch: amd64\ndev0: /dev/ttyUSB1\nlxc.idmap: u 0 100000 65536\n"
        );
    }

    #[test]
    fn remove_touches_only_the_main_section() {
        let mut c = PveConfig::parse("lxc.idmap: g 20 20 1\na: 1\n[sn]\nlxc.idmap: g 20 20 1\n");
        assert_eq!(c.remove_raw("lxc.idmap", "g 20 20 1"), 1);
        assert_eq!(c.render(), "a: 1\n[sn]\nlxc.idmap: g 20 20 1\n");
    }
}
