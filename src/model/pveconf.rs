//! The Proxmox container config (`/etc/pve/lxc/<vmid>.conf`), read the way
//! pve-container's `parse_pct_config` reads it: as bytes, split on `\n`,
//! with Perl's `\s` and its header, key and value rules. Every line is kept
//! byte for byte, so `render_bytes(parse_bytes(b)) == b`; edits touch the
//! main section only.
//!
//! The `&str` API ([`PveConfig::parse`], [`PveConfig::render`] and every
//! value it hands out) speaks the *text form* of the bytes
//! ([`bytes_to_text`]): UTF-8 where the config is UTF-8, and each byte that
//! is not as one character of U+10FF80..=U+10FFFF. The mapping is
//! reversible ([`text_to_bytes`]), so a Latin-1 comment survives an edit.

use std::borrow::Cow;
use std::fmt;

/// The first of the 128 characters that stand for the bytes 0x80..=0xFF in
/// the text form (the end of Supplementary Private Use Area-B).
const ESCAPE_BASE: u32 = 0x10_FF00;

/// True for a character that stands for one byte in the text form.
fn is_escape(c: char) -> bool {
    (ESCAPE_BASE + 0x80..=ESCAPE_BASE + 0xFF).contains(&u32::from(c))
}

/// The text form of config bytes: valid UTF-8 stays as it is; every byte
/// that is not part of valid UTF-8 (and every byte of a character that
/// would read as an escape) becomes one escape character. Reversed by
/// [`text_to_bytes`].
pub fn bytes_to_text(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        // Escapes are never ASCII: most configs are read as they are.
        if s.is_ascii() || !s.chars().any(is_escape) {
            return Cow::Borrowed(s);
        }
    }
    let mut out = String::with_capacity(bytes.len() + 16);
    let push_escaped = |out: &mut String, b: &[u8]| {
        for &byte in b {
            // Bytes below 0x80 are always valid UTF-8 on their own.
            out.extend(char::from_u32(ESCAPE_BASE + u32::from(byte)));
        }
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if is_escape(c) {
                let mut buf = [0u8; 4];
                push_escaped(&mut out, c.encode_utf8(&mut buf).as_bytes());
            } else {
                out.push(c);
            }
        }
        push_escaped(&mut out, chunk.invalid());
    }
    Cow::Owned(out)
}

/// The bytes a text-form string stands for (see [`bytes_to_text`]).
pub fn text_to_bytes(text: &str) -> Cow<'_, [u8]> {
    if text.is_ascii() || !text.chars().any(is_escape) {
        return Cow::Borrowed(text.as_bytes());
    }
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        if is_escape(c) {
            // In range by is_escape: the byte is 0x80..=0xFF.
            out.push(u8::try_from(u32::from(c) - ESCAPE_BASE).unwrap_or(b'?'));
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    Cow::Owned(out)
}

/// Perl's `\s` on a byte string (pve-container reads configs as bytes):
/// space, `\t`, `\n`, vertical tab, form feed, `\r`. Not NBSP, not U+0085.
pub fn is_perl_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn trim_start_perl(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| is_perl_space(c)).count();
    &b[n..]
}

fn trim_end_perl(b: &[u8]) -> &[u8] {
    let n = b.iter().rev().take_while(|&&c| is_perl_space(c)).count();
    &b[..b.len() - n]
}

fn trim_perl(b: &[u8]) -> &[u8] {
    trim_end_perl(trim_start_perl(b))
}

/// A Proxmox boolean: `1|on|yes|true` and `0|off|no|false`, letters in any
/// case (pve-common's `parse_boolean`, pve-container's `check_type`).
/// `None` for anything else.
pub fn parse_bool(value: &str) -> Option<bool> {
    const TRUE: [&str; 4] = ["1", "on", "yes", "true"];
    const FALSE: [&str; 4] = ["0", "off", "no", "false"];
    if TRUE.iter().any(|t| value.eq_ignore_ascii_case(t)) {
        Some(true)
    } else if FALSE.iter().any(|f| value.eq_ignore_ascii_case(f)) {
        Some(false)
    } else {
        None
    }
}

/// What a top-level boolean key means to Proxmox once its config is loaded.
/// A value [`parse_bool`] refuses is only warned about at load and kept as
/// written, and Perl then treats every string but `0` and `` as true:
/// `unprivileged: 01` is an unprivileged container.
pub fn pve_flag(value: Option<&str>) -> bool {
    match value {
        None => false,
        Some(v) => parse_bool(v).unwrap_or(!v.is_empty() && v != "0"),
    }
}

/// How a line ended in the original text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eol {
    Lf,
    CrLf,
    /// The last line of a file without a final newline.
    None,
}

impl Eol {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Eol::Lf => b"\n",
            Eol::CrLf => b"\r\n",
            Eol::None => b"",
        }
    }
}

/// What a line means to pve-container. Values are in the text form.
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
    /// A line with `snapstate: prepare|delete` at its end (PVE's match is
    /// not anchored at the start of the line).
    Snapstate(String),
    /// `delete: keys`: only meaningful in `[pve:pending]`.
    Delete(String),
    /// Anything else: PVE warns and ignores it; we keep it verbatim.
    Unknown,
}

/// One line: its bytes without the line ending, and the ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    bytes: Vec<u8>,
    pub eol: Eol,
    pub kind: LineKind,
}

impl Line {
    /// A line from its bytes before the `\n` (a final `\r` included).
    fn from_raw(raw: &[u8], last: bool) -> Line {
        let (body, eol) = match raw.strip_suffix(b"\r") {
            Some(b) if !last => (b, Eol::CrLf),
            _ if last => (raw, Eol::None),
            _ => (raw, Eol::Lf),
        };
        Line {
            // Classified with its `\r`: Perl's `\s*$` sees it, and
            // `unprivileged:\r` is a key whose value is `\r`.
            kind: classify(raw),
            bytes: body.to_vec(),
            eol,
        }
    }

    /// A new line the tool writes, from text-form `text`.
    fn new(text: &str, eol: Eol) -> Line {
        let bytes = text_to_bytes(text).into_owned();
        let kind = match eol {
            Eol::CrLf => {
                let mut with_cr = bytes.clone();
                with_cr.push(b'\r');
                classify(&with_cr)
            }
            _ => classify(&bytes),
        };
        Line { bytes, eol, kind }
    }

    /// The line's bytes, without its ending.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The line in the text form, without its ending.
    pub fn text(&self) -> Cow<'_, str> {
        bytes_to_text(&self.bytes)
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

/// pve-container's `$MAX_DEVICES`: `dev0` to `dev255`.
pub const MAX_DEVICES: u32 = 256;

/// A `devN:` entry, parsed as Proxmox parses it (`parse_device`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevEntry {
    pub index: u32,
    pub path: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `0` and three octal digits, as Proxmox requires.
    pub mode: Option<String>,
    pub deny_write: bool,
    /// The whole value as written.
    pub value: String,
}

/// A `devN:` line Proxmox cannot parse: it warns when it loads the config
/// and its start then fails in `update_lxc_config`. Shown with
/// [`DevError::message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevError {
    pub index: u32,
    /// 1-based line number in the config.
    pub line: usize,
    pub value: String,
    pub reason: String,
}

impl DevError {
    /// `<conf> line N: devN: <why>; fix: ...`.
    pub fn message(&self, conf: &str, vmid: u32) -> String {
        format!(
            "{conf} line {}: dev{}: '{}': {}; fix: write it as 'dev{}: /dev/<node>[,gid=<number>][,uid=<number>][,mode=0<octal>][,deny-write=1]', or remove it with 'pct set {vmid} --delete dev{}'",
            self.line, self.index, self.value, self.reason, self.index, self.index
        )
    }
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

/// What `is_valid_lxc_conf_key` says of a raw key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LxcKey {
    /// Kept in the config's `lxc` list (some with a warning).
    Valid,
    /// `lxc.environment.runtime`: becomes the `env` key, not an `lxc` entry.
    Environment,
    /// Refused with this reason (only warned about by a normal load).
    Refused(&'static str),
    /// Unknown: "unable to parse config" (only warned about by a normal load).
    Unknown,
}

/// pve-container's `$valid_lxc_conf_keys`.
const VALID_LXC_KEYS: &[&str] = &[
    "lxc.apparmor.profile",
    "lxc.apparmor.allow_incomplete",
    "lxc.apparmor.allow_nesting",
    "lxc.apparmor.raw",
    "lxc.selinux.context",
    "lxc.include",
    "lxc.arch",
    "lxc.uts.name",
    "lxc.signal.halt",
    "lxc.signal.reboot",
    "lxc.signal.stop",
    "lxc.init.cmd",
    "lxc.init.cwd",
    "lxc.init.uid",
    "lxc.init.gid",
    "lxc.init.groups",
    "lxc.pty.max",
    "lxc.console.logfile",
    "lxc.console.path",
    "lxc.tty.max",
    "lxc.devtty.dir",
    "lxc.hook.autodev",
    "lxc.autodev",
    "lxc.kmsg",
    "lxc.mount.fstab",
    "lxc.mount.entry",
    "lxc.mount.auto",
    "lxc.rootfs.mount",
    "lxc.cap.drop",
    "lxc.cap.keep",
    "lxc.seccomp.profile",
    "lxc.seccomp.notify.proxy",
    "lxc.seccomp.notify.cookie",
    "lxc.idmap",
    "lxc.hook.pre-start",
    "lxc.hook.pre-mount",
    "lxc.hook.mount",
    "lxc.hook.start",
    "lxc.hook.stop",
    "lxc.hook.post-stop",
    "lxc.hook.clone",
    "lxc.hook.destroy",
    "lxc.hook.version",
    "lxc.log.level",
    "lxc.log.file",
    "lxc.start.auto",
    "lxc.start.delay",
    "lxc.start.order",
    "lxc.group",
    "lxc.environment",
    "lxc.environment.hooks",
    "lxc.sysctl.fs.mqueue",
    "lxc.sysctl.kernel.msgmax",
    "lxc.sysctl.kernel.msgmnb",
    "lxc.sysctl.kernel.msgmni",
    "lxc.sysctl.kernel.sem",
    "lxc.sysctl.kernel.shmall",
    "lxc.sysctl.kernel.shmmax",
    "lxc.sysctl.kernel.shmmni",
    "lxc.sysctl.kernel.shm_rmid_forced",
];

/// pve-container's `$deprecated_lxc_conf_keys` (kept, with a warning).
const DEPRECATED_LXC_KEYS: &[&str] = &[
    "lxc.aa_profile",
    "lxc.aa_allow_incomplete",
    "lxc.console",
    "lxc.devttydir",
    "lxc.haltsignal",
    "lxc.rebootsignal",
    "lxc.stopsignal",
    "lxc.id_map",
    "lxc.init_cmd",
    "lxc.loglevel",
    "lxc.logfile",
    "lxc.mount",
    "lxc.network.type",
    "lxc.network.flags",
    "lxc.network.link",
    "lxc.network.mtu",
    "lxc.network.name",
    "lxc.network.hwaddr",
    "lxc.network.ipv4",
    "lxc.network.ipv4.gateway",
    "lxc.network.ipv6",
    "lxc.network.ipv6.gateway",
    "lxc.network.script.up",
    "lxc.network.script.down",
    "lxc.pts",
    "lxc.se_context",
    "lxc.seccomp",
    "lxc.tty",
    "lxc.utsname",
];

/// pve-container's `is_valid_lxc_conf_key`, in its order.
pub fn lxc_key(key: &str) -> LxcKey {
    if key == "lxc.environment.runtime" {
        return LxcKey::Environment;
    }
    if key.starts_with("lxc.limit.") || DEPRECATED_LXC_KEYS.contains(&key) {
        return LxcKey::Valid;
    }
    match key {
        "lxc.rootfs.path" => return LxcKey::Refused("lxc.rootfs.path is auto generated from rootfs"),
        "lxc.rootfs.options" => return LxcKey::Refused("lxc.rootfs.options is not supported, please use mount point options in the \"rootfs\" key"),
        _ => {}
    }
    if VALID_LXC_KEYS.contains(&key)
        || key.starts_with("lxc.cgroup.")
        || key.starts_with("lxc.cgroup2.")
        || key.starts_with("lxc.prlimit.")
        || key.starts_with("lxc.net.")
    {
        LxcKey::Valid
    } else {
        LxcKey::Unknown
    }
}

impl PveConfig {
    /// Parses config text in the text form (see [`bytes_to_text`]). Never
    /// fails: lines PVE would not understand are kept as
    /// [`LineKind::Unknown`].
    pub fn parse(text: &str) -> PveConfig {
        PveConfig::parse_bytes(&text_to_bytes(text))
    }

    /// Parses the config's bytes as read from disk. Never fails, whatever
    /// the encoding or the length of a line.
    pub fn parse_bytes(bytes: &[u8]) -> PveConfig {
        let mut lines = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    lines.push(Line::from_raw(&rest[..pos], false));
                    rest = &rest[pos + 1..];
                }
                None => {
                    lines.push(Line::from_raw(rest, true));
                    rest = &[];
                }
            }
        }
        PveConfig { lines }
    }

    /// The config in the text form: exactly the input text for a config
    /// that is UTF-8.
    pub fn render(&self) -> String {
        match bytes_to_text(&self.render_bytes()) {
            Cow::Borrowed(s) => s.to_string(),
            Cow::Owned(s) => s,
        }
    }

    /// The config's bytes, as they go to disk.
    pub fn render_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.lines.iter().map(|l| l.bytes.len() + 2).sum());
        for line in &self.lines {
            out.extend_from_slice(&line.bytes);
            out.extend_from_slice(line.eol.as_bytes());
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

    /// The main section's `lxc` list as Proxmox keeps it: valid raw keys,
    /// in order (`lxc.environment.runtime` and refused keys are not in it).
    pub fn lxc_entries(&self) -> Vec<(&str, &str)> {
        self.main_lines()
            .iter()
            .filter_map(|l| match &l.kind {
                LineKind::Raw { key, value } if lxc_key(key) == LxcKey::Valid => {
                    Some((key.as_str(), value.as_str()))
                }
                _ => None,
            })
            .collect()
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

    /// The `unprivileged` flag as Proxmox reads it ([`pve_flag`]): `1`,
    /// `yes`, `on`, `true` in any case. The default is privileged.
    pub fn unprivileged(&self) -> bool {
        pve_flag(self.get("unprivileged"))
    }

    /// User-namespaced as `update_lxc_config` decides it: unprivileged, or
    /// any `lxc.idmap` line (`$unprivileged || $custom_idmap`).
    pub fn userns(&self) -> bool {
        self.unprivileged() || self.raw_values("lxc.idmap").next().is_some()
    }

    /// The registered hookscript volume, like `local:snippets/x`.
    pub fn hookscript(&self) -> Option<&str> {
        self.get("hookscript")
    }

    /// `devN` entries of the main section that parse, by index. The last of
    /// duplicates wins; one that does not parse is in [`Self::dev_errors`].
    pub fn dev_entries(&self) -> Vec<DevEntry> {
        self.dev_results()
            .into_iter()
            .filter_map(Result::ok)
            .collect()
    }

    /// The `devN` entries Proxmox cannot parse (so its start would fail).
    pub fn dev_errors(&self) -> Vec<DevError> {
        self.dev_results()
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }

    /// Each `devN` of the main section (the last line of an index), parsed.
    pub fn dev_results(&self) -> Vec<Result<DevEntry, DevError>> {
        let mut last: Vec<(u32, usize, &str)> = Vec::new();
        for (line, index, value) in self.indexed_keys("dev") {
            last.retain(|(i, _, _)| *i != index);
            last.push((index, line, value));
        }
        last.sort_by_key(|(i, _, _)| *i);
        last.into_iter()
            .map(|(index, line, value)| {
                let parsed = if index < MAX_DEVICES {
                    DevEntry::parse(index, value)
                } else {
                    Err(format!("Proxmox knows dev0 to dev{} only (it warns 'unknown setting' and never writes it)", MAX_DEVICES - 1))
                };
                parsed.map_err(|reason| DevError {
                    index,
                    line,
                    value: value.to_string(),
                    reason,
                })
            })
            .collect()
    }

    /// `mpN` entries of the main section, by index.
    pub fn mp_entries(&self) -> Vec<MpEntry> {
        let mut out: Vec<MpEntry> = Vec::new();
        for (_, index, value) in self.indexed_keys("mp") {
            out.retain(|d| d.index != index);
            out.push(MpEntry::parse(index, value));
        }
        out.sort_by_key(|d| d.index);
        out
    }

    /// `(1-based line, index, value)` of each main-section key `<prefix>N`.
    fn indexed_keys<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (usize, u32, &'a str)> + 'a {
        self.main_lines()
            .iter()
            .enumerate()
            .filter_map(move |(n, l)| match &l.kind {
                LineKind::Key { key, value } => {
                    let digits = key.strip_prefix(prefix)?;
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    Some((n + 1, digits.parse().ok()?, value.as_str()))
                }
                _ => None,
            })
    }

    /// The keys of a section as Proxmox's loader stores them: the last
    /// value of each key, `description` from the `#` lines and
    /// `description:` lines, `env` from `lxc.environment.runtime`, and
    /// `delete` only in `[pve:pending]`. Values in the text form.
    pub fn section_keys(&self, section: &Section) -> std::collections::BTreeMap<String, String> {
        let mut keys = std::collections::BTreeMap::new();
        let mut descr = String::new();
        for (s, line) in self.lines_with_sections() {
            if s != *section {
                continue;
            }
            match &line.kind {
                // A second header of the same section starts it afresh
                // (`$conf = $res->{$section} = {}`).
                LineKind::PendingHeader | LineKind::SnapshotHeader(_) => {
                    keys.clear();
                    descr.clear();
                }
                LineKind::Comment => {
                    descr.push_str(&line.text()[1..]);
                    if line.eol == Eol::CrLf {
                        // Perl's `^#(.*)$` keeps the `\r` of a CRLF line.
                        descr.push('\r');
                    }
                    descr.push('\n');
                }
                LineKind::Key { key, value } if key == "description" => {
                    // Proxmox's own regex for `description:` takes priority.
                    match description_value(&line.bytes) {
                        Some(v) => descr.push_str(&v),
                        None => {
                            keys.insert(key.clone(), value.clone());
                        }
                    }
                }
                LineKind::Key { key, value } => {
                    keys.insert(key.clone(), value.clone());
                }
                LineKind::Raw { key, value } if lxc_key(key) == LxcKey::Environment => {
                    keys.entry("env".to_string())
                        .and_modify(|e: &mut String| {
                            e.push('\0');
                            e.push_str(value);
                        })
                        .or_insert_with(|| value.clone());
                }
                LineKind::Delete(value) if *section == Section::Pending => {
                    keys.insert("delete".into(), value.clone());
                }
                _ => {}
            }
        }
        if !descr.is_empty() {
            keys.insert("description".into(), descr);
        }
        keys
    }

    /// The snapshot names, in the order of their headers.
    pub fn snapshot_names(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| match &l.kind {
                LineKind::SnapshotHeader(n) => Some(n.as_str()),
                _ => None,
            })
            .collect()
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
        self.end_line_before(at, eol);
        self.lines.insert(at, Line::new(text, eol));
    }

    /// Gives the line before `at` a line ending if it is the file's last
    /// line without one. Its meaning stays: a final `\r` without `\n` is
    /// part of the line's text either way.
    fn end_line_before(&mut self, at: usize, eol: Eol) {
        if at > 0 && self.lines[at - 1].eol == Eol::None {
            let prev = &mut self.lines[at - 1];
            prev.eol = if prev.bytes.ends_with(b"\r") {
                Eol::Lf
            } else {
                eol
            };
        }
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
            .map(|v| Line::new(&format!("{key}: {v}"), eol))
            .collect();
        if new.is_empty() {
            return;
        }
        self.end_line_before(at, eol);
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
            self.lines[i] = Line::new(&text, eol);
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
        let value = bytes_to_text(trim_perl(&text_to_bytes(value))).into_owned();
        self.remove_main_where(
            |l| matches!(&l.kind, LineKind::Raw { key: k, value: v } if k == key && *v == value),
        )
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
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| start + i);
        let line = &bytes[start..end];
        if is_pending_header(line) || snapshot_header(line).is_some() {
            // A header starts with `[`, so `start` is a char boundary.
            return &text[..start];
        }
        start = end + 1;
    }
    text
}

/// `^\[pve:pending\]\s*$`, case-insensitive.
fn is_pending_header(raw: &[u8]) -> bool {
    const H: &[u8] = b"[pve:pending]";
    raw.len() >= H.len()
        && raw[..H.len()].eq_ignore_ascii_case(H)
        && raw[H.len()..].iter().all(|&b| is_perl_space(b))
}

/// `^\[([a-z][a-z0-9_\-]+)\]\s*$`, case-insensitive: the snapshot's name.
fn snapshot_header(raw: &[u8]) -> Option<&str> {
    let inner = raw.strip_prefix(b"[")?;
    let len = inner
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_' || **c == b'-')
        .count();
    let (name, rest) = inner.split_at(len);
    let rest = rest.strip_prefix(b"]")?;
    if name.len() < 2 || !name[0].is_ascii_alphabetic() || !rest.iter().all(|&b| is_perl_space(b)) {
        return None;
    }
    std::str::from_utf8(name).ok()
}

fn classify(raw: &[u8]) -> LineKind {
    if raw.iter().all(|&b| is_perl_space(b)) {
        return LineKind::Blank;
    }
    if is_pending_header(raw) {
        return LineKind::PendingHeader;
    }
    if let Some(name) = snapshot_header(raw) {
        return LineKind::SnapshotHeader(name.to_string());
    }
    if raw.starts_with(b"#") {
        return LineKind::Comment;
    }
    if let Some((key, value)) = parse_raw(raw) {
        return LineKind::Raw { key, value };
    }
    if let Some(value) = description_value(raw) {
        return LineKind::Key {
            key: "description".into(),
            value,
        };
    }
    if let Some(state) = snapstate(raw) {
        return LineKind::Snapstate(state.into());
    }
    if let Some(value) = prefixed_value(raw, b"delete:") {
        return LineKind::Delete(value);
    }
    if let Some((key, value)) = parse_key(raw) {
        return LineKind::Key { key, value };
    }
    LineKind::Unknown
}

fn text(b: &[u8]) -> String {
    bytes_to_text(b).into_owned()
}

/// `^(lxc\.[a-z0-9_\-\.]+)(:|\s*=)\s*(.*?)\s*$`
fn parse_raw(raw: &[u8]) -> Option<(String, String)> {
    let after = raw.strip_prefix(b"lxc.")?;
    let len = after
        .iter()
        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.".contains(c))
        .count();
    if len == 0 {
        return None;
    }
    let key = &raw[..4 + len];
    let rest = &after[len..];
    let value = match rest.strip_prefix(b":") {
        Some(v) => v,
        None => trim_start_perl(rest).strip_prefix(b"=")?,
    };
    Some((text(key), text(trim_perl(value))))
}

/// `^<prefix>\s*(.*\S)\s*$`: the value, if it has a non-space byte.
fn prefixed_value(raw: &[u8], prefix: &[u8]) -> Option<String> {
    let value = trim_perl(raw.strip_prefix(prefix)?);
    (!value.is_empty()).then(|| text(value))
}

/// `^(description):\s*(.*\S)\s*$`
fn description_value(raw: &[u8]) -> Option<String> {
    prefixed_value(raw, b"description:")
}

/// `snapstate:\s*(prepare|delete)\s*$`, anywhere in the line (PVE's match
/// is not anchored at the start).
fn snapstate(raw: &[u8]) -> Option<&'static str> {
    const S: &[u8] = b"snapstate:";
    (0..raw.len().saturating_sub(S.len() - 1))
        .filter(|&i| raw[i..].starts_with(S))
        .find_map(|i| {
            let rest = trim_end_perl(trim_start_perl(&raw[i + S.len()..]));
            match rest {
                b"prepare" => Some("prepare"),
                b"delete" => Some("delete"),
                _ => None,
            }
        })
}

/// `^([a-z][a-z_]*\d*):\s*(.+?)\s*$`
fn parse_key(raw: &[u8]) -> Option<(String, String)> {
    let colon = raw.iter().position(|&b| b == b':')?;
    let key = &raw[..colon];
    if key.is_empty() || !key[0].is_ascii_lowercase() {
        return None;
    }
    let alpha_end = key
        .iter()
        .position(|c| !(c.is_ascii_lowercase() || *c == b'_'))
        .unwrap_or(key.len());
    if !key[alpha_end..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let rest = &raw[colon + 1..];
    let trimmed = trim_perl(rest);
    let value = if !trimmed.is_empty() {
        trimmed
    } else {
        // Only spaces: `\s*` gives back one so `.+?` can match it, as Perl
        // backtracks (`swap:  ` has the value ` `).
        rest.last_chunk::<1>()?.as_slice()
    };
    Some((text(key), text(value)))
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

/// `^[+-]?\d+$` with `minimum => 0`, as a `u32`.
fn parse_dev_id(key: &str, v: &str) -> Result<u32, String> {
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{key}={v} is not a number"));
    }
    if v.starts_with('-') && digits.bytes().any(|b| b != b'0') {
        return Err(format!("{key}={v} is below 0"));
    }
    digits
        .parse::<u32>()
        .map_err(|_| format!("{key}={v} is larger than 4294967295"))
}

impl DevEntry {
    /// A new entry for `path` with no options.
    pub fn new(index: u32, path: &str) -> DevEntry {
        DevEntry {
            index,
            path: path.to_string(),
            uid: None,
            gid: None,
            mode: None,
            deny_write: false,
            value: path.to_string(),
        }
    }

    /// Parses a `devN` value as pve-container's `parse_device` does (with
    /// pve-common's `parse_property_string`): the path is required and
    /// starts with `/dev/` without `.` or `..` components, `uid` and `gid`
    /// are integers of at least 0, `mode` is `0` and three octal digits,
    /// `deny-write` is a boolean. The error says what is wrong.
    pub fn parse(index: u32, value: &str) -> Result<DevEntry, String> {
        let mut path: Option<&str> = None;
        let mut seen: Vec<&str> = Vec::new();
        let mut entry = DevEntry::new(index, "");
        entry.value = value.to_string();
        for part in value.split(',') {
            if part.bytes().all(is_perl_space) {
                continue;
            }
            let Some((k, v)) = part.split_once('=') else {
                if path.is_some() {
                    return Err("the path is given twice".into());
                }
                path = Some(part);
                continue;
            };
            if k.is_empty() || v.is_empty() {
                return Err(format!("'{part}' has no key or no value"));
            }
            if seen.contains(&k) || (k == "path" && path.is_some()) {
                return Err(format!("{k} is given twice"));
            }
            seen.push(k);
            match k {
                "path" => path = Some(v),
                "uid" => entry.uid = Some(parse_dev_id(k, v)?),
                "gid" => entry.gid = Some(parse_dev_id(k, v)?),
                "mode" => {
                    let b = v.as_bytes();
                    if b.len() != 4
                        || b[0] != b'0'
                        || !b[1..].iter().all(|c| (b'0'..=b'7').contains(c))
                    {
                        return Err(format!("mode={v} is not 0 and three octal digits"));
                    }
                    entry.mode = Some(v.to_string());
                }
                "deny-write" => {
                    entry.deny_write = parse_bool(v)
                        .ok_or_else(|| format!("deny-write={v} is not a boolean (1 or 0)"))?;
                }
                _ => return Err(format!("unknown option '{k}'")),
            }
        }
        let path = path.ok_or("no device path")?;
        let bytes = path.as_bytes();
        let dot_component = bytes.windows(2).enumerate().any(|(i, w)| {
            // `/.` or `/..`, followed by `/` or the end.
            w[0] == b'/' && w[1] == b'.' && {
                let after = &bytes[i + 2..];
                let after = after.strip_prefix(b".").unwrap_or(after);
                after.is_empty() || after[0] == b'/'
            }
        });
        if !path.starts_with("/dev/") || dot_component {
            return Err(format!("{path} is not a valid device path (it must start with /dev/ and have no . or .. component)"));
        }
        entry.path = path.to_string();
        Ok(entry)
    }

    /// The value as PVE writes it. A path holding `=` keeps its `path=`
    /// key: written bare, it would read back as an unknown option.
    pub fn render(&self) -> String {
        let mut out = if self.path.contains('=') {
            format!("path={}", self.path)
        } else {
            self.path.clone()
        };
        if self.deny_write {
            out.push_str(",deny-write=1");
        }
        if let Some(gid) = self.gid {
            out.push_str(&format!(",gid={gid}"));
        }
        if let Some(mode) = &self.mode {
            out.push_str(&format!(",mode={mode}"));
        }
        if let Some(uid) = self.uid {
            out.push_str(&format!(",uid={uid}"));
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

    fn kind(s: &str) -> LineKind {
        classify(s.as_bytes())
    }

    #[test]
    fn classifies_like_pve() {
        assert_eq!(kind(""), LineKind::Blank);
        assert_eq!(kind(" \t"), LineKind::Blank);
        assert_eq!(kind("#x"), LineKind::Comment);
        assert_eq!(kind("[pve:pending]"), LineKind::PendingHeader);
        assert_eq!(kind("[PVE:Pending] "), LineKind::PendingHeader);
        assert_eq!(kind("[snap1]"), LineKind::SnapshotHeader("snap1".into()));
        assert_eq!(kind("[1snap]"), LineKind::Unknown);
        assert_eq!(
            kind("lxc.idmap = u 0 100000 65536 "),
            LineKind::Raw {
                key: "lxc.idmap".into(),
                value: "u 0 100000 65536".into()
            }
        );
        assert_eq!(
            kind("lxc.idmap:g 20 20 1"),
            LineKind::Raw {
                key: "lxc.idmap".into(),
                value: "g 20 20 1".into()
            }
        );
        assert_eq!(
            kind("dev0:\t/dev/ttyUSB0,gid=20\r"),
            LineKind::Key {
                key: "dev0".into(),
                value: "/dev/ttyUSB0,gid=20".into()
            }
        );
        assert_eq!(kind("Dev0: x"), LineKind::Unknown);
        assert_eq!(kind("dev0a: x"), LineKind::Unknown);
        assert_eq!(kind("memory:"), LineKind::Unknown);
        assert_eq!(kind("lxc.: x"), LineKind::Unknown);
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
        assert_eq!(d.gid, Some(20));
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
        let d = DevEntry::parse(1, "path=/dev/dri/renderD128,uid=0,gid=104").unwrap();
        assert_eq!(d.path, "/dev/dri/renderD128");
        assert_eq!(d.render(), "/dev/dri/renderD128,gid=104,uid=0");
        // Found by fuzzing: a path with `=` must keep its key to read back.
        let d = DevEntry::parse(0, "path=/dev/a=b,gid=20").unwrap();
        assert_eq!(d.path, "/dev/a=b");
        assert_eq!(d.render(), "path=/dev/a=b,gid=20");
        assert_eq!(DevEntry::parse(0, &d.render()).unwrap().path, "/dev/a=b");
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

    #[test]
    fn booleans_are_proxmox_booleans() {
        for v in ["1", "on", "yes", "true", "True", "YES", "On", "TRUE"] {
            assert_eq!(parse_bool(v), Some(true), "{v}");
            let c = PveConfig::parse(&format!("unprivileged: {v}\n"));
            assert!(c.unprivileged(), "{v}");
        }
        for v in ["0", "off", "no", "false", "False", "NO"] {
            assert_eq!(parse_bool(v), Some(false), "{v}");
            assert!(!PveConfig::parse(&format!("unprivileged: {v}\n")).unprivileged());
        }
        // Refused by the type check, kept as written, true to Perl.
        assert_eq!(parse_bool("01"), None);
        assert!(PveConfig::parse("unprivileged: 01\n").unprivileged());
        assert!(PveConfig::parse("unprivileged:     1    \n").unprivileged());
        assert!(!PveConfig::parse("arch: amd64\n").unprivileged());
        let d = DevEntry::parse(0, "/dev/ttyUSB0,deny-write=true").unwrap();
        assert!(d.deny_write);
        assert!(
            !DevEntry::parse(0, "/dev/ttyUSB0,deny-write=Off")
                .unwrap()
                .deny_write
        );
    }

    #[test]
    fn user_namespaced_is_unprivileged_or_any_idmap_line() {
        assert!(!PveConfig::parse("arch: amd64\n").userns());
        assert!(PveConfig::parse("unprivileged: yes\n").userns());
        let c = PveConfig::parse("lxc.idmap: u 0 100000 65536\nlxc.idmap: g 0 100000 65536\n");
        assert!(!c.unprivileged());
        assert!(c.userns());
        // Only the main section's lines count.
        assert!(!PveConfig::parse("arch: amd64\n[s1]\nlxc.idmap: u 0 1 1\n").userns());
    }

    #[test]
    fn whitespace_is_perls() {
        // A vertical tab or form feed after a header still makes it a header.
        assert_eq!(
            kind("[snap1]\x0b"),
            LineKind::SnapshotHeader("snap1".into())
        );
        assert_eq!(kind("[pve:pending]\x0c"), LineKind::PendingHeader);
        assert_eq!(kind(" [snap1]"), LineKind::Unknown);
        assert_eq!(kind("[s]"), LineKind::Unknown);
        assert_eq!(kind("\x0b\x0c"), LineKind::Blank);
        // NBSP is not `\s`: it stays in the value.
        assert_eq!(
            kind("lxc.idmap: u 0 100000 65536\u{a0}"),
            LineKind::Raw {
                key: "lxc.idmap".into(),
                value: "u 0 100000 65536\u{a0}".into()
            }
        );
        assert_eq!(
            kind("lxc.idmap\x0b= u 0 1 1\x0c"),
            LineKind::Raw {
                key: "lxc.idmap".into(),
                value: "u 0 1 1".into()
            }
        );
        assert_eq!(kind("lxc.mount.entry : /a b"), LineKind::Unknown);
        assert_eq!(kind("lxc.Mount.entry: /a b"), LineKind::Unknown);
        // `\s*` gives back a space so `.+?` matches: Perl's backtracking.
        assert_eq!(
            kind("swap:  "),
            LineKind::Key {
                key: "swap".into(),
                value: " ".into()
            }
        );
        assert_eq!(
            kind("snapstate: prepare"),
            LineKind::Snapstate("prepare".into())
        );
        assert_eq!(kind("delete: swap"), LineKind::Delete("swap".into()));
        let c = PveConfig::parse(
            "unprivileged: 1\n\n[snap1]\x0b\nunprivileged: 0\nlxc.idmap: u 0 1 1\n",
        );
        assert!(c.unprivileged());
        assert!(c.idmap_lines().is_empty());
        assert_eq!(c.snapshot_names(), vec!["snap1"]);
        // `unprivileged:\r` on a CRLF line: the value is the `\r` itself.
        let c = PveConfig::parse_bytes(b"unprivileged:\r\n");
        assert_eq!(c.get("unprivileged"), Some("\r"));
        assert!(c.unprivileged());
    }

    #[test]
    fn any_bytes_round_trip_and_survive_an_edit() {
        let mut input = b"arch: amd64\n#caf\xe9\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 70_001));
        input.extend_from_slice(b"\nunprivileged: 1\n\n[snap1]\n#\xff\xfe\0\n");
        let mut c = PveConfig::parse_bytes(&input);
        assert_eq!(c.render_bytes(), input);
        assert!(c.unprivileged());
        assert_eq!(PveConfig::parse(&c.render()).render_bytes(), input);
        c.push_raw("lxc.idmap", "g 20 20 1");
        let mut want = b"arch: amd64\n#caf\xe9\n".to_vec();
        want.extend(std::iter::repeat_n(b'x', 70_001));
        want.extend_from_slice(
            b"\nunprivileged: 1\nlxc.idmap: g 20 20 1\n\n[snap1]\n#\xff\xfe\0\n",
        );
        assert_eq!(c.render_bytes(), want);
        assert_eq!(text_to_bytes(&c.render()).as_ref(), want.as_slice());
    }

    #[test]
    fn the_text_form_is_reversible() {
        for b in [
            &b""[..],
            b"plain",
            b"caf\xc3\xa9",
            b"caf\xe9",
            b"\xf4\x8f\xbe\x80 is U+10FF80",
            b"\xf4\x8f\xbf\xbf\xff",
            b"\xc3",
        ] {
            let t = bytes_to_text(b);
            assert_eq!(text_to_bytes(&t).as_ref(), b, "{b:?}");
        }
        assert!(matches!(bytes_to_text(b"caf\xc3\xa9"), Cow::Borrowed(_)));
    }

    #[test]
    fn dev_entries_parse_like_proxmox() {
        let ok = |v: &str| DevEntry::parse(0, v).unwrap();
        let d = ok("/dev/ttyUSB0,gid=+20,uid=-0,mode=0660,deny-write=yes");
        assert_eq!(
            (d.uid, d.gid, d.mode.as_deref(), d.deny_write),
            (Some(0), Some(20), Some("0660"), true)
        );
        assert_eq!(ok("path=/dev/ttyUSB0, ").path, "/dev/ttyUSB0");
        assert_eq!(ok("gid=5,/dev/x").path, "/dev/x");
        for (v, why) in [
            (",gid=abc", "gid=abc is not a number"),
            ("gid=20", "no device path"),
            ("/tmp/ttyUSB0", "is not a valid device path"),
            ("/dev/../etc/shadow", "is not a valid device path"),
            ("/dev/x/.", "is not a valid device path"),
            ("/dev/x,gid=-1", "below 0"),
            ("/dev/x,uid=4294967296", "larger than"),
            ("/dev/x,mode=660", "octal"),
            ("/dev/x,mode=0680", "octal"),
            ("/dev/x,deny-write=2", "not a boolean"),
            ("/dev/x,foo=1", "unknown option 'foo'"),
            ("/dev/x,gid=1,gid=2", "gid is given twice"),
            ("/dev/x,/dev/y", "path is given twice"),
            ("path=/dev/x,/dev/y", "path is given twice"),
            ("/dev/x,gid=", "no key or no value"),
        ] {
            let e = DevEntry::parse(0, v).unwrap_err();
            assert!(e.contains(why), "{v}: {e}");
        }
        assert!(ok("/dev/.hidden/x").path.starts_with("/dev/"));
    }

    #[test]
    fn a_bad_dev_line_is_an_error_not_an_entry() {
        let c = PveConfig::parse("arch: amd64\ndev0: ,gid=abc\ndev1: /dev/ttyUSB1\n");
        let devs = c.dev_entries();
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].path, "/dev/ttyUSB1");
        let errs = c.dev_errors();
        assert_eq!(errs.len(), 1);
        let m = errs[0].message("/etc/pve/lxc/105.conf", 105);
        assert!(
            m.starts_with(
                "/etc/pve/lxc/105.conf line 2: dev0: ',gid=abc': gid=abc is not a number; fix: "
            ),
            "{m}"
        );
        assert!(m.ends_with("'pct set 105 --delete dev0'"), "{m}");
        let c = PveConfig::parse("dev255: /dev/ttyUSB0\ndev256: /dev/ttyUSB1\n");
        assert_eq!(c.dev_entries().len(), 1);
        assert!(c.dev_errors()[0].reason.contains("dev0 to dev255 only"));
        // The last line of an index decides, as in Proxmox.
        let c = PveConfig::parse("dev0: ,gid=abc\ndev0: /dev/ttyUSB1,gid=20\n");
        assert!(c.dev_errors().is_empty());
        assert_eq!(c.dev_entries()[0].gid, Some(20));
    }

    #[test]
    fn lxc_entries_and_section_keys_are_proxmoxs() {
        let c = PveConfig::parse("#a\nunprivileged: 1\nlxc.rootfs.path: /x\nlxc.foo: 1\nlxc.environment.runtime: A=1\nlxc.environment.runtime = B=2\nlxc.idmap: u 0 1 1\nlxc.cgroup2.x: 1\ndelete: swap\ndescription: d\n[pve:pending]\nmemory: 2\ndelete: swap\n");
        assert_eq!(
            c.lxc_entries(),
            vec![("lxc.idmap", "u 0 1 1"), ("lxc.cgroup2.x", "1")]
        );
        let main = c.section_keys(&Section::Main);
        assert_eq!(main.get("env").map(String::as_str), Some("A=1\0B=2"));
        assert_eq!(main.get("description").map(String::as_str), Some("a\nd"));
        assert!(!main.contains_key("delete"));
        let pending = c.section_keys(&Section::Pending);
        assert_eq!(pending.get("delete").map(String::as_str), Some("swap"));
        let c = PveConfig::parse("a: 1\n[pve:pending]\nmemory: 1\n[pve:pending]\ncores: 3\n");
        let pending = c.section_keys(&Section::Pending);
        assert_eq!(pending.keys().collect::<Vec<_>>(), vec!["cores"]);
        assert_eq!(lxc_key("lxc.id_map"), LxcKey::Valid);
        assert_eq!(lxc_key("lxc.limit.nofile"), LxcKey::Valid);
        assert!(matches!(lxc_key("lxc.rootfs.options"), LxcKey::Refused(_)));
    }

    #[test]
    fn a_final_cr_without_newline_keeps_its_meaning() {
        let mut c = PveConfig::parse_bytes(b"arch: amd64\r");
        c.push_raw("lxc.idmap", "g 20 20 1");
        assert_eq!(c.render_bytes(), b"arch: amd64\r\nlxc.idmap: g 20 20 1\n");
    }
}
