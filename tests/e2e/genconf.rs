//! The bed's own, independent reading of `/etc/pve/lxc/<vmid>.conf` and its
//! stand-in for PVE's `update_lxc_config`. Pure: device facts come in as
//! arguments. Deliberately not the product's parser, so a bug there cannot
//! hide itself here.

/// The main section of a container config, as PVE's `parse_pct_config` sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PveConf {
    /// Normal `key: value` lines, in file order (the last one wins).
    pub keys: Vec<(String, String)>,
    /// Raw `lxc.*` lines, in file order, duplicates kept
    /// (`lxc.environment.runtime` is in `env` instead, as in PVE).
    pub raw: Vec<(String, String)>,
    /// `lxc.environment.runtime` values, in file order.
    pub env: Vec<String>,
}

/// Perl's `\s` on bytes: space, `\t`, `\n`, vertical tab, form feed, `\r`.
fn perl_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// `^\[pve:pending\]\s*$`/i or `^\[([a-z][a-z0-9_\-]+)\]\s*$`/i.
fn is_header(line: &str) -> bool {
    let Some(inner) = line
        .trim_end_matches(perl_space)
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
    else {
        return false;
    };
    inner.eq_ignore_ascii_case("pve:pending")
        || (inner.len() >= 2
            && inner.starts_with(|c: char| c.is_ascii_alphabetic())
            && inner
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

/// A PVE boolean: `1|on|yes|true`, `0|off|no|false`, any case.
pub fn pve_bool(v: &str) -> Option<bool> {
    let v = v.to_ascii_lowercase();
    match v.as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

impl PveConf {
    /// Parses the main section as `parse_pct_config` does: lines (split on
    /// `\n`) before the first section header. Blank and `#` lines are
    /// skipped; anything else unknown is ignored.
    pub fn parse(text: &str) -> PveConf {
        let mut conf = PveConf::default();
        for line in text.split('\n') {
            if line.chars().all(perl_space) || line.starts_with('#') {
                continue;
            }
            if is_header(line) {
                break;
            }
            if let Some((k, v)) = raw_key(line) {
                if k == "lxc.environment.runtime" {
                    conf.env.push(v);
                } else {
                    conf.raw.push((k, v));
                }
            } else if let Some((k, v)) = normal_key(line) {
                conf.keys.push((k, v));
            }
        }
        conf
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// PVE's booleans; a value they refuse is kept, and Perl reads every
    /// string but `0` as true.
    pub fn unprivileged(&self) -> bool {
        self.get("unprivileged")
            .is_some_and(|v| pve_bool(v).unwrap_or(v != "0"))
    }

    /// `update_lxc_config`'s `$unprivileged || $custom_idmap`.
    pub fn userns(&self) -> bool {
        self.unprivileged() || self.raw.iter().any(|(k, _)| k == "lxc.idmap")
    }

    /// The `lxc.idmap` lines; a malformed one fails the start in the LXC
    /// pre-start hook, as in PVE.
    pub fn idmap(&self) -> Result<Vec<IdMap>, String> {
        self.raw
            .iter()
            .filter(|(k, _)| k == "lxc.idmap")
            .map(|(_, v)| IdMap::parse(v).ok_or_else(|| format!("failed to parse idmap: {v}")))
            .collect()
    }

    /// The map in force for this container (`parse_id_maps`): the
    /// `lxc.idmap` lines whatever the flag, else the default for an
    /// unprivileged container, else none.
    pub fn effective_idmap(&self) -> Result<Vec<IdMap>, String> {
        let lines = self.idmap()?;
        if !lines.is_empty() || !self.unprivileged() {
            return Ok(lines);
        }
        Ok(vec![
            IdMap {
                kind: 'u',
                ct: 0,
                host: 100_000,
                len: 65_536,
            },
            IdMap {
                kind: 'g',
                ct: 0,
                host: 100_000,
                len: 65_536,
            },
        ])
    }

    /// `devN:` entries in file order.
    pub fn devs(&self) -> Result<Vec<(String, DevSpec)>, String> {
        let mut out = Vec::new();
        for (k, v) in &self.keys {
            let Some(n) = k.strip_prefix("dev") else {
                continue;
            };
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            out.push((
                k.clone(),
                DevSpec::parse(v).map_err(|e| format!("{k}: {e}"))?,
            ));
        }
        Ok(out)
    }

    /// `hookscript: <storage>:snippets/<file>`.
    pub fn hookscript(&self) -> Option<&str> {
        self.get("hookscript")
    }
}

/// `^(lxc\.[a-z0-9_\-\.]+)(:|\s*=)\s*(.*?)\s*$`
fn raw_key(line: &str) -> Option<(String, String)> {
    if !line.starts_with("lxc.") {
        return None;
    }
    let end = line
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c)))
        .unwrap_or(line.len());
    let key = &line[..end];
    let rest = &line[end..];
    let rest = if let Some(r) = rest.strip_prefix(':') {
        r
    } else {
        rest.trim_start_matches(perl_space).strip_prefix('=')?
    };
    Some((key.to_string(), rest.trim_matches(perl_space).to_string()))
}

/// `^([a-z][a-z_]*\d*):\s*(.+?)\s*$` (values trimmed of Perl's `\s`).
fn normal_key(line: &str) -> Option<(String, String)> {
    let (k, v) = line.split_once(':')?;
    let mut chars = k.chars();
    if !chars.next()?.is_ascii_lowercase() {
        return None;
    }
    let letters_then_digits = {
        let tail = k.trim_end_matches(|c: char| c.is_ascii_digit());
        tail.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    };
    let v = v.trim_matches(perl_space);
    (letters_then_digits && !v.is_empty()).then(|| (k.to_string(), v.to_string()))
}

/// One `lxc.idmap` line: container IDs `[ct, ct+len)` to host `[host, host+len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub kind: char,
    pub ct: u32,
    pub host: u32,
    pub len: u32,
}

impl IdMap {
    /// `^([ug])\s+(\d+)\s+(\d+)\s+(\d+)\s*$`
    pub fn parse(v: &str) -> Option<IdMap> {
        let f: Vec<&str> = v.split(perl_space).filter(|s| !s.is_empty()).collect();
        let [kind, ct, host, len] = f.as_slice() else {
            return None;
        };
        let kind = match *kind {
            "u" => 'u',
            "g" => 'g',
            _ => return None,
        };
        let num = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        Some(IdMap {
            kind,
            ct: num(ct)?,
            host: num(host)?,
            len: num(len)?,
        })
    }
}

/// Maps a container ID to the host through `map`; an ID outside the map is
/// used unchanged, as PVE does for `devN` owners.
pub fn map_to_host(map: &[IdMap], kind: char, id: u32) -> u32 {
    for m in map.iter().filter(|m| m.kind == kind) {
        let (ct, len, id64) = (u64::from(m.ct), u64::from(m.len), u64::from(id));
        if id64 >= ct && id64 < ct + len {
            return u32::try_from(u64::from(m.host) + (id64 - ct)).unwrap_or(id);
        }
    }
    id
}

/// One `devN:` value: `<path>[,mode=0NNN][,uid=N][,gid=N][,deny-write=1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSpec {
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub deny_write: bool,
}

impl DevSpec {
    pub fn parse(v: &str) -> Result<DevSpec, String> {
        let mut spec = DevSpec {
            path: String::new(),
            mode: 0o660,
            uid: 0,
            gid: 0,
            deny_write: false,
        };
        for (i, part) in v.split(',').enumerate() {
            let part = part.trim();
            let (k, val) = match part.split_once('=') {
                Some((k, val)) => (k, val),
                None if i == 0 => ("path", part),
                None => return Err(format!("invalid option '{part}'")),
            };
            let num = |s: &str| s.parse::<u32>().map_err(|_| format!("invalid {k} '{s}'"));
            match k {
                "path" => spec.path = val.to_string(),
                "mode" => {
                    spec.mode =
                        u32::from_str_radix(val, 8).map_err(|_| format!("invalid mode '{val}'"))?
                }
                "uid" => spec.uid = num(val)?,
                "gid" => spec.gid = num(val)?,
                "deny-write" => {
                    spec.deny_write =
                        pve_bool(val).ok_or_else(|| format!("invalid deny-write '{val}'"))?
                }
                _ => return Err(format!("unknown option '{k}'")),
            }
        }
        if !spec.path.starts_with("/dev/") || spec.path.split('/').any(|c| c == "." || c == "..") {
            return Err(format!(
                "invalid path '{}': must start with /dev/ and have no . or .. parts",
                spec.path
            ));
        }
        Ok(spec)
    }
}

/// What `stat` (following symlinks) said about a `devN` path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNode {
    /// `'c'` or `'b'`.
    pub kind: char,
    pub major: u32,
    pub minor: u32,
}

/// Where the generated config points LXC's hooks.
#[derive(Debug, Clone)]
pub struct HookPaths {
    pub pre_start: String,
    pub autodev: String,
    pub post_stop: String,
}

/// The common allow-list of a privileged container (LXC's and PVE's
/// `common.conf`).
pub const PRIVILEGED_ALLOW: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 136:* rwm",
    "c 10:229 rwm",
];

/// This host has the cgroup v1 devices controller: `lxc.cgroup2.devices.*`
/// (what PVE writes) becomes `lxc.cgroup.devices.*`. Other keys unchanged.
pub fn translate_key(key: &str) -> String {
    match key.strip_prefix("lxc.cgroup2.devices.") {
        Some(rest) => format!("lxc.cgroup.devices.{rest}"),
        None => key.to_string(),
    }
}

/// The stand-in for `update_lxc_config`: `/var/lib/lxc/<vmid>/config`.
/// `devs` carries, per `devN` entry, the node `stat` found.
pub fn lxc_config(
    vmid: u32,
    conf: &PveConf,
    devs: &[(DevSpec, DevNode)],
    hooks: &HookPaths,
) -> Result<String, String> {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        out.push_str(&translate_key(k));
        out.push_str(" = ");
        out.push_str(v);
        out.push('\n');
    };
    line("lxc.arch", "amd64");
    // The include of PVE's common config: device policy and PVE's hooks.
    if conf.userns() {
        line("lxc.cgroup2.devices.allow", "a");
    } else {
        line("lxc.cgroup2.devices.deny", "a");
        for a in PRIVILEGED_ALLOW {
            line("lxc.cgroup2.devices.allow", a);
        }
    }
    line("lxc.hook.pre-start", &hooks.pre_start);
    line("lxc.hook.autodev", &hooks.autodev);
    line("lxc.hook.post-stop", &hooks.post_stop);
    line("lxc.monitor.unshare", "1");
    line("lxc.autodev", "1");
    line("lxc.apparmor.profile", "unconfined");
    line("lxc.mount.auto", "proc:mixed sys:mixed cgroup:mixed");
    line("lxc.tty.max", "0");
    line("lxc.pty.max", "16");
    let hostname = conf
        .get("hostname")
        .map(str::to_string)
        .unwrap_or_else(|| format!("CT{vmid}"));
    line("lxc.uts.name", &hostname);
    if let Some(ep) = conf.get("entrypoint") {
        line("lxc.init.cmd", ep);
    }
    // PVE's order: devN rules, then the default map, then (after the
    // console, tty, memory and network keys) lxc.environment.runtime, then
    // the raw keys. A malformed lxc.idmap is only warned about here.
    for (spec, node) in devs {
        let perms = if spec.deny_write { "r" } else { "rw" };
        line(
            "lxc.cgroup2.devices.allow",
            &format!("{} {}:{} {perms}", node.kind, node.major, node.minor),
        );
        if spec.deny_write {
            line(
                "lxc.cgroup2.devices.deny",
                &format!("{} {}:{} w", node.kind, node.major, node.minor),
            );
        }
    }
    let custom_idmap = conf.raw.iter().any(|(k, _)| k == "lxc.idmap");
    if conf.unprivileged() && !custom_idmap {
        line("lxc.idmap", "u 0 100000 65536");
        line("lxc.idmap", "g 0 100000 65536");
    }
    for v in &conf.env {
        line("lxc.environment.runtime", v);
    }
    for (k, v) in &conf.raw {
        line(k, v);
    }
    line(
        "lxc.rootfs.path",
        &format!("dir:/var/lib/lxc/{vmid}/rootfs"),
    );
    line("lxc.net.0.type", "empty");
    Ok(out)
}

/// One line of the device list the bed's LXC pre-start hook reads:
/// `<path> <c|b> <major> <minor> <mode octal> <host uid> <host gid>`.
pub fn device_spec_line(spec: &DevSpec, node: &DevNode, map: &[IdMap]) -> String {
    format!(
        "{} {} {} {} {:o} {} {}\n",
        spec.path,
        node.kind,
        node.major,
        node.minor,
        spec.mode,
        map_to_host(map, 'u', spec.uid),
        map_to_host(map, 'g', spec.gid)
    )
}
