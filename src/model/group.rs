//! The container's `/etc/group` and `/etc/gshadow`: a byte-preserving parser
//! and the Group rules of DESIGN.md (keep the name of an existing GID, create
//! a group under its preferred or a free name, add the member). Pure.

use std::collections::BTreeMap;

use crate::model::state::GroupCollision;
use crate::model::text::{self, Limits};

/// Container files are untrusted: at most this many lines.
pub const MAX_LINES: usize = 200_000;
/// Byte and line-length limits for `/etc/group`, `/etc/gshadow` and `/etc/passwd`.
pub const LIMITS: Limits = Limits::CONTAINER_FILE;

/// One line of a colon-separated account file, split once, kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// The line without `\n` (a `\r` stays in the text).
    pub text: &'a str,
    /// The fields, if the line is a well-formed entry with `n` fields.
    pub fields: Option<Vec<&'a str>>,
}

/// Splits `text` into lines, each parsed as an entry of `n` fields when it is one.
/// `render(lines) == text` (the final newline is tracked by the caller).
pub fn split_entries(text: &str, n: usize) -> Vec<Line<'_>> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() && text.is_empty() {
        return Vec::new();
    }
    body.split('\n')
        .map(|l| {
            let clean = l.strip_suffix('\r').unwrap_or(l);
            let fields = if clean.starts_with('#') || clean.trim().is_empty() {
                None
            } else {
                let f: Vec<&str> = clean.split(':').collect();
                (f.len() == n && !f[0].is_empty()).then_some(f)
            };
            Line { text: l, fields }
        })
        .collect()
}

/// Checks size, encoding, NUL bytes, line length and line count.
pub fn check_text<'a>(file: &str, bytes: &'a [u8]) -> Result<&'a str, String> {
    let t = text::decode(file, bytes, LIMITS).map_err(|e| e.to_string())?;
    let lines = t.bytes().filter(|&b| b == b'\n').count();
    if lines > MAX_LINES {
        return Err(format!(
            "{file}: {lines} lines is more than the {MAX_LINES} allowed; not editing it"
        ));
    }
    Ok(t)
}

/// A group the container should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupWant {
    /// GID inside the container.
    pub gid: u32,
    /// Name to create it under when the GID does not exist yet (`dialout` for 20).
    pub name: String,
}

/// What happened to one wanted group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupOutcome {
    pub gid: u32,
    /// Its name inside the container, existing or created.
    pub name: String,
    pub created: bool,
    pub member_added: bool,
    /// The preferred name was taken by another GID, so a free name was used.
    pub renamed_from: Option<String>,
}

/// The result of [`ensure_groups`]: new file texts when they change, and
/// what happened to each group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupEdit {
    pub group: Option<String>,
    pub gshadow: Option<String>,
    pub outcomes: Vec<GroupOutcome>,
}

/// True for a name `groupadd` would accept and that cannot break the format.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn parse_gid(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Group names by GID and GIDs by name, first entry wins (as `getgrgid` does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupIndex {
    pub by_gid: BTreeMap<u32, String>,
    pub by_name: BTreeMap<String, u32>,
    /// GIDs whose member list contains a user, by user name.
    pub member_of: BTreeMap<String, Vec<u32>>,
}

/// Indexes `/etc/group` text.
pub fn index(text: &str) -> GroupIndex {
    let mut ix = GroupIndex::default();
    for line in split_entries(text, 4) {
        let Some(f) = line.fields else { continue };
        let Some(gid) = parse_gid(f[2]) else { continue };
        ix.by_gid.entry(gid).or_insert_with(|| f[0].to_string());
        ix.by_name.entry(f[0].to_string()).or_insert(gid);
        for m in f[3].split(',').filter(|m| !m.is_empty()) {
            let v = ix.member_of.entry(m.to_string()).or_default();
            if !v.contains(&gid) {
                v.push(gid);
            }
        }
    }
    ix
}

/// Host device groups (`names`, e.g. render) whose host GID carries another
/// name inside the container: host render 104 is `_ssh` in Debian images.
/// `inside_by_gid`: the container's names of those GIDs.
pub fn collisions(
    host: &GroupIndex,
    inside_by_gid: &BTreeMap<u32, String>,
    names: &[&str],
) -> Vec<GroupCollision> {
    names
        .iter()
        .filter_map(|n| {
            let gid = *host.by_name.get(*n)?;
            let inside = inside_by_gid.get(&gid)?;
            (inside != n).then(|| GroupCollision {
                gid,
                host_name: (*n).to_string(),
                container_name: inside.clone(),
            })
        })
        .collect()
}

/// Adds `member` to the comma list `list`; `None` if it is already there.
fn add_to_list(list: &str, member: &str) -> Option<String> {
    if list.split(',').any(|m| m == member) {
        return None;
    }
    Some(if list.is_empty() {
        member.to_string()
    } else {
        format!("{list},{member}")
    })
}

/// Rewrites one line with its last (4th) field replaced, keeping a `\r`.
fn with_members(line: &str, fields: &[&str], members: &str) -> String {
    let cr = if line.ends_with('\r') { "\r" } else { "" };
    format!("{}:{}:{}:{members}{cr}", fields[0], fields[1], fields[2])
}

/// Joins lines back, then appends `extra` lines, keeping whether the file
/// ended with a newline.
fn join(text: &str, lines: &[String], extra: &[String]) -> String {
    let had_final_nl = text.is_empty() || text.ends_with('\n');
    let mut out = String::with_capacity(text.len() + 64 * extra.len());
    let all: Vec<&String> = lines.iter().chain(extra.iter()).collect();
    for (i, l) in all.iter().enumerate() {
        out.push_str(l);
        if i + 1 < all.len() || had_final_nl {
            out.push('\n');
        }
    }
    out
}

/// Applies the Group rules: for each wanted GID, keep an existing group's
/// name or create one; add `member` to each (when given). `gshadow` is
/// edited alongside when present. Returns an error naming the file for
/// input that cannot be edited safely. Output differs from input only by
/// the change.
pub fn ensure_groups(
    group: &str,
    gshadow: Option<&str>,
    wants: &[GroupWant],
    member: Option<&str>,
) -> Result<GroupEdit, String> {
    if let Some(m) = member {
        if !valid_name(m) {
            return Err(format!(
                "user name {m:?} is not a valid group member name; not editing /etc/group"
            ));
        }
    }
    for w in wants {
        if !valid_name(&w.name) {
            return Err(format!("group name {:?} is not valid", w.name));
        }
    }
    let entries = split_entries(group, 4);
    let mut lines: Vec<String> = entries.iter().map(|l| l.text.to_string()).collect();
    let ix = index(group);
    let mut taken: Vec<String> = ix.by_name.keys().cloned().collect();
    let mut extra: Vec<String> = Vec::new();
    let mut outcomes = Vec::new();
    // Group name -> member to add in gshadow (None: only create the entry).
    let mut shadow_wants: Vec<(String, bool)> = Vec::new();
    let mut seen = Vec::new();

    for w in wants {
        if seen.contains(&w.gid) {
            continue;
        }
        seen.push(w.gid);
        if let Some(name) = ix.by_gid.get(&w.gid) {
            let pos = entries
                .iter()
                .position(|l| {
                    l.fields
                        .as_ref()
                        .is_some_and(|f| parse_gid(f[2]) == Some(w.gid))
                })
                .ok_or_else(|| format!("/etc/group: gid {} vanished while editing", w.gid))?;
            let mut added = false;
            if let (Some(m), Some(f)) = (member, entries[pos].fields.as_ref()) {
                if let Some(new) = add_to_list(f[3], m) {
                    lines[pos] = with_members(entries[pos].text, f, &new);
                    added = true;
                }
            }
            if !valid_name(name) {
                return Err(format!(
                    "/etc/group: group {name:?} with gid {} has a name the tool will not handle; fix that line",
                    w.gid
                ));
            }
            shadow_wants.push((name.clone(), member.is_some()));
            outcomes.push(GroupOutcome {
                gid: w.gid,
                name: name.clone(),
                created: false,
                member_added: added,
                renamed_from: None,
            });
        } else {
            let name = free_name(&w.name, w.gid, &taken);
            taken.push(name.clone());
            extra.push(format!("{name}:x:{}:{}", w.gid, member.unwrap_or("")));
            shadow_wants.push((name.clone(), member.is_some()));
            outcomes.push(GroupOutcome {
                gid: w.gid,
                renamed_from: (name != w.name).then(|| w.name.clone()),
                name,
                created: true,
                member_added: member.is_some(),
            });
        }
    }

    let new_group = join(group, &lines, &extra);
    let new_shadow = match gshadow {
        None => None,
        Some(s) => Some(edit_gshadow(s, &shadow_wants, member)?),
    };
    Ok(GroupEdit {
        group: (new_group != group).then_some(new_group),
        gshadow: match (gshadow, new_shadow) {
            (Some(old), Some(new)) if new != old => Some(new),
            _ => None,
        },
        outcomes,
    })
}

/// `want` if free, else `<want><gid>`, else `<want><gid>_<n>`.
fn free_name(want: &str, gid: u32, taken: &[String]) -> String {
    let free = |n: &str| !taken.iter().any(|t| t == n);
    if free(want) {
        return want.to_string();
    }
    let base = format!("{want}{gid}");
    if free(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}_{n}"))
        .find(|n| free(n))
        .unwrap_or(base)
}

fn edit_gshadow(
    text: &str,
    wants: &[(String, bool)],
    member: Option<&str>,
) -> Result<String, String> {
    let entries = split_entries(text, 4);
    let mut lines: Vec<String> = entries.iter().map(|l| l.text.to_string()).collect();
    let mut extra = Vec::new();
    for (name, add) in wants {
        let pos = entries
            .iter()
            .position(|l| l.fields.as_ref().is_some_and(|f| f[0] == name));
        match pos {
            Some(p) => {
                if let (true, Some(m), Some(f)) = (*add, member, entries[p].fields.as_ref()) {
                    if let Some(new) = add_to_list(f[3], m) {
                        lines[p] = with_members(entries[p].text, f, &new);
                    }
                }
            }
            None => {
                let m = if *add { member.unwrap_or("") } else { "" };
                extra.push(format!("{name}:!::{m}"));
            }
        }
    }
    Ok(join(text, &lines, &extra))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn dialout() -> Vec<GroupWant> {
        vec![GroupWant {
            gid: 20,
            name: "dialout".into(),
        }]
    }

    const DEBIAN: &str = "root:x:0:\ndaemon:x:1:\ndialout:x:20:\nnode:x:1000:\n";

    #[rstest]
    #[case::add_to_empty_list(DEBIAN, "root:x:0:\ndaemon:x:1:\ndialout:x:20:node\nnode:x:1000:\n")]
    #[case::append_to_list("dialout:x:20:a,b\n", "dialout:x:20:a,b,node\n")]
    #[case::keeps_other_name("uucp:x:20:\n", "uucp:x:20:node\n")]
    #[case::creates("root:x:0:\n", "root:x:0:\ndialout:x:20:node\n")]
    #[case::no_final_newline("root:x:0:", "root:x:0:\ndialout:x:20:node")]
    #[case::comments_kept("# c\n\nroot:x:0:\n", "# c\n\nroot:x:0:\ndialout:x:20:node\n")]
    #[case::crlf_kept("dialout:x:20:a\r\n", "dialout:x:20:a,node\r\n")]
    #[case::fedora_dialout_18("dialout:x:18:\n", "dialout:x:18:\ndialout20:x:20:node\n")]
    #[case::empty_file("", "dialout:x:20:node\n")]
    #[case::garbage_line_kept("!!junk\nroot:x:0:\n", "!!junk\nroot:x:0:\ndialout:x:20:node\n")]
    fn group_rules(#[case] input: &str, #[case] want: &str) {
        let e = ensure_groups(input, None, &dialout(), Some("node")).unwrap();
        assert_eq!(e.group.as_deref().unwrap_or(input), want);
    }

    #[test]
    fn already_member_changes_nothing() {
        let t = "dialout:x:20:x,node\n";
        let e = ensure_groups(t, Some("dialout:!::node\n"), &dialout(), Some("node")).unwrap();
        assert_eq!(e.group, None);
        assert_eq!(e.gshadow, None);
        assert!(!e.outcomes[0].member_added);
        assert!(!e.outcomes[0].created);
    }

    #[test]
    fn gid_20_under_another_name_keeps_it() {
        let e = ensure_groups("tty:x:5:\nuucp:x:20:\n", None, &dialout(), Some("n")).unwrap();
        assert_eq!(e.outcomes[0].name, "uucp");
        assert_eq!(e.group.unwrap(), "tty:x:5:\nuucp:x:20:n\n");
    }

    #[test]
    fn fedora_rename_is_reported() {
        let e = ensure_groups("dialout:x:18:\ndialout20:x:77:\n", None, &dialout(), None).unwrap();
        let o = &e.outcomes[0];
        assert_eq!(o.name, "dialout20_2");
        assert_eq!(o.renamed_from.as_deref(), Some("dialout"));
        assert!(o.created && !o.member_added);
        assert!(e.group.unwrap().ends_with("dialout20_2:x:20:\n"));
    }

    #[test]
    fn gshadow_is_edited_alongside() {
        let g = "root:x:0:\nuucp:x:20:\n";
        let s = "root:*::\nuucp:!:adm:a\n";
        let wants = vec![
            GroupWant {
                gid: 20,
                name: "dialout".into(),
            },
            GroupWant {
                gid: 993,
                name: "render".into(),
            },
        ];
        let e = ensure_groups(g, Some(s), &wants, Some("node")).unwrap();
        assert_eq!(
            e.group.unwrap(),
            "root:x:0:\nuucp:x:20:node\nrender:x:993:node\n"
        );
        assert_eq!(
            e.gshadow.unwrap(),
            "root:*::\nuucp:!:adm:a,node\nrender:!::node\n"
        );
    }

    #[test]
    fn gshadow_missing_entry_for_existing_group_is_added() {
        let e = ensure_groups("dialout:x:20:\n", Some(""), &dialout(), Some("n")).unwrap();
        assert_eq!(e.gshadow.unwrap(), "dialout:!::n\n");
    }

    #[test]
    fn bad_member_names_are_refused() {
        for m in ["a:b", "a,b", "", "a\nb", "-x"] {
            assert!(
                ensure_groups(DEBIAN, None, &dialout(), Some(m)).is_err(),
                "{m:?}"
            );
        }
    }

    #[test]
    fn binary_garbage_is_a_clear_error() {
        let e = check_text("/etc/group", b"root:x:0:\n\xff\xfe\x00garbage").unwrap_err();
        assert!(e.starts_with("/etc/group line 2: not valid UTF-8"), "{e}");
        let e = check_text("/etc/group", b"root:x:0:\n\0\0\0").unwrap_err();
        assert!(e.contains("line 2") && e.contains("NUL"), "{e}");
    }

    #[test]
    fn size_and_line_limits() {
        let big = vec![b'a'; LIMITS.max_bytes + 1];
        assert!(check_text("/etc/group", &big)
            .unwrap_err()
            .contains("larger than"));
        let many = "g:x:1:\n".repeat(MAX_LINES + 1);
        assert!(check_text("/etc/group", many.as_bytes())
            .unwrap_err()
            .contains("lines is more than"));
    }

    #[test]
    fn hundred_thousand_lines() {
        let mut t = String::new();
        for i in 0..100_000u32 {
            t.push_str(&format!("g{i}:x:{}:u{i}\n", i + 30_000));
        }
        let checked = check_text("/etc/group", t.as_bytes()).unwrap();
        let start = std::time::Instant::now();
        let e = ensure_groups(checked, None, &dialout(), Some("node")).unwrap();
        let out = e.group.unwrap();
        assert_eq!(out.len(), t.len() + "dialout:x:20:node\n".len());
        assert!(out.starts_with(&t));
        // Generous: it is linear; this catches an accidental quadratic.
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn collisions_name_the_container_group() {
        let host = index("dialout:x:20:\nvideo:x:44:\nrender:x:104:\n");
        let ct = index("dialout:x:20:\nvideo:x:44:\n_ssh:x:104:\n");
        let want: BTreeMap<u32, String> = [20, 44, 104]
            .iter()
            .filter_map(|g| ct.by_gid.get(g).map(|n| (*g, n.clone())))
            .collect();
        let c = collisions(&host, &want, &["dialout", "render", "video"]);
        assert_eq!(
            c,
            vec![GroupCollision {
                gid: 104,
                host_name: "render".into(),
                container_name: "_ssh".into()
            }]
        );
        // A GID free inside is no collision.
        assert!(collisions(&host, &BTreeMap::new(), &["render"]).is_empty());
    }

    #[test]
    fn index_first_entry_wins() {
        let ix = index("a:x:20:u\nb:x:20:\na:x:30:v,u\n");
        assert_eq!(ix.by_gid[&20], "a");
        assert_eq!(ix.by_name["a"], 20);
        assert_eq!(ix.member_of["u"], vec![20, 30]);
    }

    proptest! {
        /// Any input: output = input with only the change; untouched lines stay byte-equal.
        #[test]
        fn only_the_change(lines in proptest::collection::vec("[a-z0-9:#,\r ]{0,20}", 0..20), nl in any::<bool>()) {
            let mut t = lines.join("\n");
            if nl && !t.is_empty() { t.push('\n'); }
            let Ok(e) = ensure_groups(&t, None, &dialout(), Some("node")) else { return Ok(()); };
            let out = e.group.clone().unwrap_or_else(|| t.clone());
            let before: Vec<&str> = t.strip_suffix('\n').unwrap_or(&t).split('\n').collect();
            let after: Vec<&str> = out.strip_suffix('\n').unwrap_or(&out).split('\n').collect();
            prop_assert!(after.len() >= before.len());
            let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            prop_assert!(changed <= 1);
            // Idempotent.
            let again = ensure_groups(&out, None, &dialout(), Some("node")).unwrap();
            prop_assert_eq!(again.group, None);
        }
    }
}
