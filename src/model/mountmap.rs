//! Per-mount-point ID maps: Proxmox's `idmap=` option on an `mpN` line
//! (pve-container >= 6.1.6), its syntax and checks as Proxmox has them,
//! and whether the installed pve-container has it (`dpkg-query`).

use crate::model::idmap::{IdKind, IdRange, RawIdmap};
use crate::model::pveconf::MpEntry;

/// The first pve-container with the `idmap=` mount point option
/// (its changelog: "add support for idmapped mounts", 6.1.6).
pub const MIN_VERSION: [u64; 3] = [6, 1, 6];

/// The `dpkg-query` arguments that print an installed package's state and
/// version (`ii |6.1.10`), read by [`installed_version`].
pub const DPKG_QUERY_ARGS: [&str; 2] = ["-W", "-f=${db:Status-Abbrev}|${Version}\n"];

/// The version in `dpkg-query`'s output when the package is installed
/// (status abbreviation `ii` or `hi`: wanted install or hold, installed).
pub fn installed_version(dpkg_query: &str) -> Option<String> {
    let line = dpkg_query.lines().next()?;
    let (status, version) = line.split_once('|')?;
    let b = status.as_bytes();
    (b.len() >= 2 && b[1] == b'i' && !version.trim().is_empty()).then(|| version.trim().to_string())
}

/// True when a Debian version (`6.1.10`, `1:6.1.6-1`, `6.1.6~bpo1`) is at
/// least [`MIN_VERSION`]: the leading numeric parts of the upstream version
/// are compared; a `~` suffix sorts before the release, as in dpkg.
pub fn supports_mp_idmap(version: &str) -> bool {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    let (nums, rest) = match v.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, ""),
    };
    let mut parts: Vec<u64> = nums.split('.').map_while(|p| p.parse().ok()).collect();
    parts.resize(3, 0);
    let have = [parts[0], parts[1], parts[2]];
    have > MIN_VERSION || (have == MIN_VERSION && !rest.starts_with('~'))
}

/// One `type:container:disk:len` entry of an `idmap=` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpIdmapEntry {
    pub kind: IdKind,
    pub ct: u64,
    pub disk: u64,
    pub len: u64,
}

impl std::fmt::Display for MpIdmapEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.kind.letter(),
            self.ct,
            self.disk,
            self.len
        )
    }
}

/// An `idmap=` value: `passthrough` (`None`) or entries.
pub type MpIdmap = Option<Vec<MpIdmapEntry>>;

/// Parses an `idmap=` value as Proxmox does: its schema pattern
/// `^(?:passthrough|[ug]:[0-9]+:[0-9]+:[1-9][0-9]*(?:;...)*)$`, then
/// `validate_id_maps` (no two entries of a type overlap on the container
/// side or on the disk side).
pub fn parse_mp_idmap(value: &str) -> Result<MpIdmap, String> {
    if value == "passthrough" {
        return Ok(None);
    }
    let bad = |what: &str| {
        format!(
            "idmap={value}: {what}; the form is 'passthrough' or 'u|g:CONTAINER:DISK:COUNT' entries separated by ';', like u:1000:1000:1;g:1000:1000:1"
        )
    };
    let mut out = Vec::new();
    for entry in value.split(';') {
        let f: Vec<&str> = entry.split(':').collect();
        let [kind, ct, disk, len] = f.as_slice() else {
            return Err(bad(&format!("'{entry}' is not an entry")));
        };
        let kind = match *kind {
            "u" => IdKind::Uid,
            "g" => IdKind::Gid,
            _ => return Err(bad(&format!("'{entry}' is not of type u or g"))),
        };
        let num = |s: &str| -> Result<u64, String> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(&format!("'{s}' in '{entry}' is not a number")));
            }
            s.parse()
                .map_err(|_| bad(&format!("'{s}' in '{entry}' is too large")))
        };
        let (ct, disk, len) = (num(ct)?, num(disk)?, num(len)?);
        if len == 0 || f[3].starts_with('0') {
            return Err(bad(&format!("the count of '{entry}' must start with 1-9")));
        }
        out.push(MpIdmapEntry {
            kind,
            ct,
            disk,
            len,
        });
    }
    validate(&out)?;
    Ok(Some(out))
}

/// Proxmox's `validate_id_maps` on a mount point map: per type and side,
/// sorted by start, no entry may begin inside the one before it.
fn validate(entries: &[MpIdmapEntry]) -> Result<(), String> {
    let show = |e: &MpIdmapEntry| format!("{} {} {} {}", e.kind.letter(), e.ct, e.disk, e.len);
    for kind in IdKind::ALL {
        for (side, get) in [
            (
                "container",
                (|e: &MpIdmapEntry| e.ct) as fn(&MpIdmapEntry) -> u64,
            ),
            ("host", |e: &MpIdmapEntry| e.disk),
        ] {
            let mut of: Vec<&MpIdmapEntry> = entries.iter().filter(|e| e.kind == kind).collect();
            of.sort_by_key(|e| get(e));
            for w in of.windows(2) {
                if get(w[0]) + w[0].len > get(w[1]) {
                    return Err(format!(
                        "invalid map entry '{}': {side} {}id {} is also mapped by entry '{}'",
                        show(w[1]),
                        kind.letter(),
                        get(w[1]),
                        show(w[0])
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The `idmap=` value for `raw.idmap` lines (host side = the ID on disk).
pub fn value_for(lines: &[RawIdmap]) -> Result<String, String> {
    let mut entries = Vec::new();
    for l in lines {
        for &kind in &l.kinds {
            entries.push(MpIdmapEntry {
                kind,
                ct: l.ct.start,
                disk: l.host.start,
                len: l.ct.len(),
            });
        }
    }
    validate(&entries)?;
    let parts: Vec<String> = entries.iter().map(ToString::to_string).collect();
    Ok(parts.join(";"))
}

/// An `mpN` value with its `idmap=` option set to `idmap` (added at the
/// end, or replaced where it is), or removed when `None`.
pub fn with_idmap(value: &str, idmap: Option<&str>) -> String {
    let mut parts: Vec<String> = value
        .split(',')
        .filter(|p| !p.starts_with("idmap="))
        .map(str::to_string)
        .collect();
    if let Some(v) = idmap {
        parts.push(format!("idmap={v}"));
    }
    parts.join(",")
}

/// A bind mount of a host directory (`mpN: /host/dir,...`), as Proxmox's
/// `classify_mountpoint` tells it: the volume is an absolute path.
pub fn is_bind(mp: &MpEntry) -> bool {
    mp.volume.starts_with('/')
}

/// The container IDs a mount point map takes out of the container map's
/// reach on that mount (for messages).
pub fn ct_ranges(map: &[MpIdmapEntry], kind: IdKind) -> Vec<IdRange> {
    map.iter()
        .filter(|e| e.kind == kind)
        .map(|e| IdRange::new(e.ct, e.len))
        .collect()
}

/// A bind mount point and the owner of its host directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOwner {
    pub key: String,
    pub host_dir: String,
    pub uid: u32,
    pub gid: u32,
}

/// For `doctor`: container-wide policy passthroughs whose host IDs own a
/// bind-mounted host directory, each with the `[[mount]]` form that serves
/// that mount without changing the container's map (what, fix).
pub fn suggest_mount_form(
    policy_lines: &[String],
    binds: &[BindOwner],
    pve_container: Option<&str>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in policy_lines {
        let Ok(raw) = RawIdmap::parse(line) else {
            continue;
        };
        for b in binds {
            let owns = raw.kinds.iter().any(|k| {
                let id = u64::from(match k {
                    IdKind::Uid => b.uid,
                    IdKind::Gid => b.gid,
                });
                raw.host.start <= id && id < raw.host.end
            });
            if !owns {
                continue;
            }
            let version = match pve_container {
                Some(v) if supports_mp_idmap(v) => String::new(),
                Some(v) => format!(
                    " (needs pve-container {}.{}.{} or later; this node has {v})",
                    MIN_VERSION[0], MIN_VERSION[1], MIN_VERSION[2]
                ),
                None => format!(
                    " (needs pve-container {}.{}.{} or later)",
                    MIN_VERSION[0], MIN_VERSION[1], MIN_VERSION[2]
                ),
            };
            out.push((
                format!(
                    "policy idmap \"{line}\" maps host IDs for the whole container, and {} is a bind mount of {} owned by {}:{}: if the passthrough only serves that mount, a per-mount-point map serves it without changing the container's map or re-owning its files{version}",
                    b.key, b.host_dir, b.uid, b.gid
                ),
                format!(
                    "replace the idmap line with [[mount]] mp = \"{}\" idmap = [\"{line}\"] in the policy",
                    b.key
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("6.1.6", true)]
    #[case("6.1.10", true)]
    #[case("6.2.0", true)]
    #[case("7.0", true)]
    #[case("1:6.1.6-1", true)]
    #[case("6.1.5", false)]
    #[case("6.1.6~bpo1", false)]
    #[case("6.1.6+pmx1", true)]
    #[case("5.3.4", false)]
    #[case("6.1", false)]
    fn version_gate(#[case] v: &str, #[case] want: bool) {
        assert_eq!(supports_mp_idmap(v), want, "{v}");
    }

    #[test]
    fn reads_the_installed_version_only() {
        assert_eq!(installed_version("ii |6.1.10\n").as_deref(), Some("6.1.10"));
        assert_eq!(installed_version("hi |6.1.6\n").as_deref(), Some("6.1.6"));
        assert_eq!(installed_version("rc |5.0.1\n"), None);
        assert_eq!(installed_version("un |\n"), None);
        assert_eq!(installed_version(""), None);
    }

    #[rstest]
    #[case("passthrough", Ok(None))]
    #[case("u:1000:1000:1;g:1000:1000:1", Ok(Some(2)))]
    #[case("u:0:100:65536", Ok(Some(1)))]
    #[case("u:1000:1000:0", Err("must start with 1-9"))]
    #[case("u:1000:1000:01", Err("must start with 1-9"))]
    #[case("x:1:1:1", Err("not of type u or g"))]
    #[case("u:1:1", Err("is not an entry"))]
    #[case("u:1:1:1;", Err("is not an entry"))]
    #[case("u:-1:1:1", Err("is not a number"))]
    #[case("Passthrough", Err("is not an entry"))]
    #[case(
        "u:1000:1000:10;u:1005:2000:1",
        Err("invalid map entry 'u 1005 2000 1': container uid 1005 is also mapped by entry 'u 1000 1000 10'")
    )]
    #[case(
        "g:1:50:5;g:10:52:1",
        Err("invalid map entry 'g 10 52 1': host gid 52 is also mapped by entry 'g 1 50 5'")
    )]
    #[case("u:1:50:5;g:1:50:5", Ok(Some(2)))]
    fn idmap_values_as_proxmox_checks_them(
        #[case] v: &str,
        #[case] want: Result<Option<usize>, &str>,
    ) {
        match (parse_mp_idmap(v), want) {
            (Ok(got), Ok(n)) => assert_eq!(got.map(|g| g.len()), n, "{v}"),
            (Err(e), Err(w)) => assert!(e.contains(w), "{e} lacks {w}"),
            (got, want) => panic!("{v}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn raw_lines_become_a_value_that_parses_back() {
        let lines = [
            RawIdmap::parse("both 1000 1000").unwrap(),
            RawIdmap::parse("gid 44 4400").unwrap(),
        ];
        let v = value_for(&lines).unwrap();
        assert_eq!(v, "u:1000:1000:1;g:1000:1000:1;g:4400:44:1");
        assert_eq!(parse_mp_idmap(&v).unwrap().unwrap().len(), 3);
        assert!(value_for(&[
            RawIdmap::parse("uid 1-10 1-10").unwrap(),
            RawIdmap::parse("uid 5 50").unwrap()
        ])
        .unwrap_err()
        .contains("host uid 5"));
    }

    #[test]
    fn suggests_the_mount_form_for_a_bind_mount_the_passthrough_owns() {
        let binds = [BindOwner {
            key: "mp0".into(),
            host_dir: "/tank/media".into(),
            uid: 1000,
            gid: 1000,
        }];
        let s = suggest_mount_form(&["both 1000 1000".into()], &binds, Some("6.1.10"));
        assert_eq!(s.len(), 1);
        assert!(
            s[0].1
                .contains("[[mount]] mp = \"mp0\" idmap = [\"both 1000 1000\"]"),
            "{s:?}"
        );
        assert!(!s[0].0.contains("needs pve-container"));
        let s = suggest_mount_form(&["gid 44 44".into()], &binds, Some("6.1.10"));
        assert!(s.is_empty(), "group 44 owns nothing there");
        let s = suggest_mount_form(&["uid 999-1001 999-1001".into()], &binds, Some("6.1.2"));
        assert!(s[0].0.contains("this node has 6.1.2"), "{s:?}");
    }

    #[test]
    fn the_option_is_added_replaced_and_removed() {
        assert_eq!(
            with_idmap("/tank/media,mp=/media", Some("u:1:1:1")),
            "/tank/media,mp=/media,idmap=u:1:1:1"
        );
        assert_eq!(
            with_idmap("/t,idmap=passthrough,mp=/m", Some("u:1:1:1")),
            "/t,mp=/m,idmap=u:1:1:1"
        );
        assert_eq!(with_idmap("/t,mp=/m,idmap=u:1:1:1", None), "/t,mp=/m");
    }
}
