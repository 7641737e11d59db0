//! The LXC config Proxmox generated for this start
//! (`/var/lib/lxc/<vmid>/config`, `key = value` lines). Edits replace whole
//! lines of one key and keep every other byte; pre-start patches it so the
//! new map (and, later, cgroup rules) apply to the very start that runs it.

use crate::model::idmap::IdmapEntry;

/// One line split into key and value, if it is `key = value`.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once('=')?;
    let k = k.trim();
    if k.is_empty() || k.starts_with('#') || k.contains(char::is_whitespace) {
        return None;
    }
    Some((k, v.trim()))
}

/// The value of `line` if its key is `key`. Most lines of a config are
/// other keys: those are told apart by their first bytes, unsplit.
fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    if !line.trim_start().starts_with(key) {
        return None;
    }
    key_value(line).filter(|(k, _)| *k == key).map(|(_, v)| v)
}

/// The generated config, kept byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LxcConfig {
    text: String,
}

impl LxcConfig {
    pub fn parse(text: &str) -> LxcConfig {
        LxcConfig {
            text: text.to_string(),
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Lines with their ending (the last may lack one).
    fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split_inclusive('\n')
    }

    /// Every value of `key`, in order.
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.lines().filter_map(move |l| {
            let body = l.trim_end_matches(['\n', '\r']);
            value_of(body, key)
        })
    }

    /// The `lxc.idmap` entries, or why one does not parse.
    pub fn idmap(&self) -> Result<Vec<IdmapEntry>, String> {
        self.values("lxc.idmap").map(IdmapEntry::parse).collect()
    }

    /// The text with every `key` line replaced by `key = value` lines for
    /// `values`, placed where the first old line was (at the end if there
    /// was none). Nothing else changes.
    pub fn with_key_replaced(&self, key: &str, values: &[String]) -> String {
        let mut out = String::with_capacity(self.text.len() + values.len() * 32);
        let mut placed = false;
        let new_lines = |out: &mut String| {
            for v in values {
                out.push_str(&format!("{key} = {v}\n"));
            }
        };
        for line in self.lines() {
            let body = line.trim_end_matches(['\n', '\r']);
            if value_of(body, key).is_some() {
                if !placed {
                    new_lines(&mut out);
                    placed = true;
                }
                continue;
            }
            out.push_str(line);
        }
        if !placed {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            new_lines(&mut out);
        }
        out
    }

    /// The text with a `key = value` line appended for each of `values` the
    /// file does not have yet (compared after trimming), or `None` when it
    /// has them all. For cgroup device rules: PVE's own rules stay.
    pub fn with_appended(&self, key: &str, values: &[String]) -> Option<String> {
        let have: Vec<&str> = self.values(key).collect();
        let mut missing: Vec<&str> = Vec::new();
        for v in values.iter().map(|v| v.trim()) {
            if !have.contains(&v) && !missing.contains(&v) {
                missing.push(v);
            }
        }
        if missing.is_empty() {
            return None;
        }
        let mut out = self.text.clone();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        for v in missing {
            out.push_str(&format!("{key} = {v}\n"));
        }
        Some(out)
    }

    /// The text with every `key` line whose value is `old` (trimmed) set to
    /// `key = new`, or `None` when there is no such line.
    pub fn with_value_replaced(&self, key: &str, old: &str, new: &str) -> Option<String> {
        let mut out = String::with_capacity(self.text.len() + new.len());
        let mut found = false;
        for line in self.lines() {
            let body = line.trim_end_matches(['\n', '\r']);
            if value_of(body, key).is_some_and(|v| v.trim() == old.trim()) {
                found = true;
                out.push_str(&format!("{key} = {new}\n"));
            } else {
                out.push_str(line);
            }
        }
        found.then_some(out)
    }

    /// The text with the `lxc.idmap` lines set to `map`, or `None` when the
    /// file already has exactly these entries in this order.
    pub fn with_idmap(&self, map: &[IdmapEntry]) -> Option<String> {
        if self.idmap().is_ok_and(|m| m == map) {
            return None;
        }
        let values: Vec<String> = map.iter().map(ToString::to_string).collect();
        Some(self.with_key_replaced("lxc.idmap", &values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::idmap::{compute, pve_default, IdKind, Passthrough};

    const GENERATED: &str = "lxc.arch = amd64\nlxc.include = /usr/share/lxc/config/debian.common.conf\nlxc.include = /usr/share/lxc/config/debian.userns.conf\nlxc.apparmor.profile = generated\nlxc.seccomp.profile = /var/lib/lxc/105/rules.seccomp\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\nlxc.mount.entry = /dev/serial/by-id/usb-x dev/ttyUSB0 none bind,optional,create=file\nlxc.rootfs.path = /var/lib/lxc/105/rootfs\nlxc.net.0.type = veth\n";

    #[test]
    fn replaces_the_idmap_lines_in_place() {
        let c = LxcConfig::parse(GENERATED);
        assert_eq!(c.idmap().unwrap(), pve_default());
        let map = compute(&pve_default(), &[Passthrough::same(IdKind::Gid, 20, "t")]).unwrap();
        let new = c.with_idmap(&map).unwrap();
        assert_eq!(
            new,
            GENERATED.replace(
                "lxc.idmap = g 0 100000 65536\n",
                ""
            )
            .replace(
                "lxc.idmap = u 0 100000 65536\n",
                "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 20\nlxc.idmap = g 20 20 1\nlxc.idmap = g 21 100021 65515\n"
            )
        );
        assert_eq!(LxcConfig::parse(&new).idmap().unwrap(), map);
        assert_eq!(LxcConfig::parse(&new).with_idmap(&map), None);
    }

    #[test]
    fn appends_when_there_was_no_map_and_repairs_the_newline() {
        let c = LxcConfig::parse("lxc.arch = amd64");
        let new = c.with_idmap(&pve_default()).unwrap();
        assert_eq!(
            new,
            "lxc.arch = amd64\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n"
        );
    }

    #[test]
    fn reads_spacing_variants_and_keeps_other_bytes() {
        let text = "# comment lxc.idmap = x\nlxc.idmap=u 0 100000 65536\r\nlxc.idmap  =  g 0 100000 65536 \nlxc.idmapx = 1\n";
        let c = LxcConfig::parse(text);
        assert_eq!(c.idmap().unwrap(), pve_default());
        assert_eq!(c.with_idmap(&pve_default()), None);
        let map = vec![IdmapEntry::new(IdKind::Uid, 0, 1000, 1)];
        assert_eq!(
            c.with_idmap(&map).unwrap(),
            "# comment lxc.idmap = x\nlxc.idmap = u 0 1000 1\nlxc.idmapx = 1\n"
        );
    }

    #[test]
    fn appends_only_missing_values() {
        let c = LxcConfig::parse("lxc.cgroup2.devices.allow = a\nlxc.rootfs.path = x");
        let rules = vec![
            "c 188:0 rwm".to_string(),
            "a".to_string(),
            "c 188:0 rwm".to_string(),
        ];
        let new = c
            .with_appended("lxc.cgroup2.devices.allow", &rules)
            .unwrap();
        assert_eq!(
            new,
            "lxc.cgroup2.devices.allow = a\nlxc.rootfs.path = x\nlxc.cgroup2.devices.allow = c 188:0 rwm\n"
        );
        assert_eq!(
            LxcConfig::parse(&new).with_appended("lxc.cgroup2.devices.allow", &rules),
            None
        );
    }

    #[test]
    fn bad_value_is_an_error() {
        assert!(LxcConfig::parse("lxc.idmap = u 0 x 1\n").idmap().is_err());
    }
}
