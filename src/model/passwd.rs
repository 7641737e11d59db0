//! The container's `/etc/passwd`, parsed by the tool (never NSS): user names
//! by UID, first entry wins as `getpwuid` does. Pure.

use crate::model::group::split_entries;

/// One passwd entry, as far as the tool needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Every well-formed entry, in file order. Malformed lines are skipped.
pub fn parse(text: &str) -> Vec<PasswdEntry> {
    split_entries(text, 7)
        .into_iter()
        .filter_map(|l| {
            let f = l.fields?;
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: num(f[2])?,
                gid: num(f[3])?,
            })
        })
        .collect()
}

/// The first entry with `uid`.
pub fn by_uid(entries: &[PasswdEntry], uid: u32) -> Option<&PasswdEntry> {
    entries.iter().find(|e| e.uid == uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_first_by_uid_and_skips_junk() {
        let t = "root:x:0:0:root:/root:/bin/sh\n# c\nbad line\nnode:x:1000:1000::/home/node:/bin/sh\nalias:x:1000:5::/:/bin/sh\nneg:x:-1:0::/:/x\n";
        let e = parse(t);
        assert_eq!(e.len(), 3);
        assert_eq!(by_uid(&e, 1000).unwrap().name, "node");
        assert_eq!(by_uid(&e, 1000).unwrap().gid, 1000);
        assert!(by_uid(&e, 4242).is_none());
    }

    #[test]
    fn crlf_and_no_final_newline() {
        let e = parse("a:x:1:2:::\r\nb:x:3:4:::");
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].name, "b");
    }
}
