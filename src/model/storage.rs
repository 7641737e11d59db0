//! Proxmox storage definitions (`/etc/pve/storage.cfg`), read only as far as
//! needed to turn a snippet volume (`<storage>:snippets/<file>`) into a path.

use std::collections::BTreeMap;

/// One `type: id` section and its `key value` properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageDef {
    pub kind: String,
    pub id: String,
    pub props: BTreeMap<String, String>,
}

/// Storage types whose volumes are files under a `path`, so they can hold snippets.
const DIR_TYPES: &[&str] = &["dir", "btrfs", "nfs", "cifs", "cephfs", "glusterfs"];

/// Parses storage.cfg the way PVE's section config does: a header line
/// `type: id` at column 0, then indented `key value` lines. Anything else is
/// skipped (PVE warns about it and goes on).
pub fn parse(text: &str) -> Vec<StorageDef> {
    let mut out: Vec<StorageDef> = Vec::new();
    let mut in_section = false;
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            in_section = false;
            continue;
        }
        if line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let (true, Some(def)) = (in_section, out.last_mut()) {
                let body = line.trim();
                let (k, v) = body.split_once([' ', '\t']).unwrap_or((body, ""));
                def.props.insert(k.to_string(), v.trim().to_string());
            }
            continue;
        }
        in_section = false;
        if let Some((kind, id)) = line.split_once(':') {
            let (kind, id) = (kind.trim(), id.trim());
            if !kind.is_empty() && !id.is_empty() && !id.contains(char::is_whitespace) {
                out.push(StorageDef {
                    kind: kind.to_string(),
                    id: id.to_string(),
                    props: BTreeMap::new(),
                });
                in_section = true;
            }
        }
    }
    out
}

/// A parsed `<storage>:snippets/<file>` volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnippetVolume<'a> {
    pub storage: &'a str,
    pub file: &'a str,
}

/// Splits a snippet volume as PVE's `check_hookscript` wants it: a storage
/// ID, `snippets/`, and a flat file name.
pub fn parse_volume(volume: &str) -> Result<SnippetVolume<'_>, String> {
    let bad = |why: &str| {
        format!("'{volume}' is not a snippet volume ({why}); write it as <storage>:snippets/<file>, like local:snippets/old-hook.pl")
    };
    let (storage, rest) = volume.split_once(':').ok_or_else(|| bad("no ':'"))?;
    let file = rest
        .strip_prefix("snippets/")
        .ok_or_else(|| bad("the content type must be 'snippets'"))?;
    let storage_ok = !storage.is_empty()
        && storage
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !storage_ok {
        return Err(bad("bad storage ID"));
    }
    if file.is_empty() || file.contains('/') || file == "." || file == ".." || file.contains('\0') {
        return Err(bad("the file name must be flat"));
    }
    Ok(SnippetVolume { storage, file })
}

/// True when every node sees the same files on the volume's storage:
/// network types, or `shared 1` (a directory mounted on every node).
/// `local` and other directories are per node.
pub fn is_shared(volume: &str, defs: &[StorageDef]) -> bool {
    let Ok(v) = parse_volume(volume) else {
        return false;
    };
    defs.iter().find(|d| d.id == v.storage).is_some_and(|d| {
        matches!(d.kind.as_str(), "nfs" | "cifs" | "cephfs" | "glusterfs")
            || d.props.get("shared").is_some_and(|s| s == "1")
    })
}

/// The host path of a snippet volume, given the parsed storage.cfg. `local`
/// is `/var/lib/vz` unless storage.cfg says otherwise, as in PVE.
pub fn snippet_path(volume: &str, defs: &[StorageDef]) -> Result<String, String> {
    let v = parse_volume(volume)?;
    let def = defs.iter().find(|d| d.id == v.storage);
    let base = match def {
        None if v.storage == "local" => "/var/lib/vz".to_string(),
        None => {
            return Err(format!(
                "'{volume}': storage '{}' is not defined in /etc/pve/storage.cfg; see 'pvesm status'",
                v.storage
            ))
        }
        Some(d) if !DIR_TYPES.contains(&d.kind.as_str()) => {
            return Err(format!(
                "'{volume}': storage '{}' is of type '{}', which cannot hold snippets; use a directory storage",
                d.id, d.kind
            ))
        }
        Some(d) => match d.props.get("path") {
            Some(p) if p.starts_with('/') => p.trim_end_matches('/').to_string(),
            Some(p) => {
                return Err(format!(
                    "'{volume}': storage '{}' has a relative path '{p}' in /etc/pve/storage.cfg",
                    d.id
                ))
            }
            None if d.id == "local" => "/var/lib/vz".to_string(),
            None if d.kind != "dir" && d.kind != "btrfs" => format!("/mnt/pve/{}", d.id),
            None => {
                return Err(format!(
                    "'{volume}': storage '{}' has no path in /etc/pve/storage.cfg",
                    d.id
                ))
            }
        },
    };
    if let Some(content) = def.and_then(|d| d.props.get("content")) {
        if !content.split(',').any(|c| c.trim() == "snippets") {
            return Err(format!(
                "'{volume}': storage '{}' does not have the 'snippets' content type; enable it with 'pvesm set {} --content {content},snippets'",
                v.storage, v.storage
            ));
        }
    }
    Ok(format!("{base}/snippets/{}", v.file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const CFG: &str = "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,snippets\n\nlvmthin: local-lvm\n\tthinpool data\n\tcontent rootdir,images\n\ndir: hooks\n\tpath /srv/hooks/\n\tcontent snippets\n\tshared 1\n\ncephfs: cfs\n\tcontent snippets\n\nnfs: nosnip\n\tpath /mnt/pve/nosnip\n\tcontent iso\n";

    #[test]
    fn parses_sections() {
        let defs = parse(CFG);
        let ids: Vec<&str> = defs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["local", "local-lvm", "hooks", "cfs", "nosnip"]);
        assert_eq!(defs[2].props["shared"], "1");
        assert_eq!(defs[1].kind, "lvmthin");
    }

    #[rstest]
    #[case("local:snippets/old.pl", Ok("/var/lib/vz/snippets/old.pl"))]
    #[case("hooks:snippets/a.sh", Ok("/srv/hooks/snippets/a.sh"))]
    #[case("cfs:snippets/a.sh", Ok("/mnt/pve/cfs/snippets/a.sh"))]
    #[case("local-lvm:snippets/a", Err("cannot hold snippets"))]
    #[case("nosnip:snippets/a", Err("pvesm set nosnip --content iso,snippets"))]
    #[case("gone:snippets/a", Err("storage 'gone' is not defined"))]
    #[case("local:iso/a", Err("content type must be 'snippets'"))]
    #[case("local:snippets/../x", Err("flat"))]
    #[case("local:snippets/", Err("flat"))]
    #[case("local:snippets/a/b", Err("flat"))]
    #[case("/var/lib/vz/snippets/a", Err("no ':'"))]
    #[case("lo cal:snippets/a", Err("bad storage ID"))]
    fn resolves_volumes(#[case] volume: &str, #[case] want: Result<&str, &str>) {
        let got = snippet_path(volume, &parse(CFG));
        match (got, want) {
            (Ok(p), Ok(w)) => assert_eq!(p, w),
            (Err(e), Err(w)) => assert!(e.contains(w), "{e} does not contain {w}"),
            (got, want) => panic!("{volume}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn local_defaults_without_storage_cfg() {
        assert_eq!(
            snippet_path("local:snippets/x", &[]).unwrap(),
            "/var/lib/vz/snippets/x"
        );
    }
}
