//! The job a container child runs (see `sys::ns`), shared by post-start
//! and the first-boot mount hook; not a phase. It reads the container's
//! passwd and group files defensively, applies the Group rules
//! (`model::group`), writes the files, and stats the device nodes.

use crate::model::access::{NodeStat, OVERFLOW_ID};
use crate::model::escape::name_refusal;
use crate::model::group::{self, GroupWant};
use crate::model::passwd;
use crate::model::poststart::{CtReport, CtRequest, DEVICE_GROUPS};
use crate::sys::ns::{self, read_untrusted, Resolve};

/// Runs inside the container (see `sys::ns`): reads passwd and group files
/// defensively, applies the Group rules, stats the device nodes.
pub fn ct_job(req: &CtRequest) -> Result<CtReport, String> {
    let max = group::LIMITS.max_bytes;
    let mut r = CtReport::default();
    match read_untrusted(None, "/etc/passwd", Resolve::NoSymlinks, max) {
        Ok(Some(b)) => match group::check_text("/etc/passwd", &b) {
            Ok(t) => {
                r.name = passwd::by_uid(&passwd::parse(t), req.uid).map(|e| e.name.clone());
                if let Some(why) = r.name.as_deref().and_then(|n| name_refusal("user", n)) {
                    r.problems.push(format!("/etc/passwd: {why}"));
                    r.name = None;
                }
            }
            Err(e) => r.problems.push(e),
        },
        Ok(None) => r.problems.push("/etc/passwd: not found".into()),
        Err(e) => r.problems.push(e),
    }
    for p in &req.ct_paths {
        let st = ns::stat_untrusted(p).unwrap_or_else(|e| {
            r.problems.push(e);
            None
        });
        r.nodes.push(st.map(|st| NodeStat {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
            is_char_device: st.st_mode & libc::S_IFMT == libc::S_IFCHR,
        }));
    }
    let mut wants: Vec<GroupWant> = Vec::new();
    let node_gids = r.nodes.iter().flatten().map(|n| n.gid);
    for gid in req.want_gids.iter().copied().chain(node_gids) {
        if gid == 0 || gid == OVERFLOW_ID || wants.iter().any(|w| w.gid == gid) {
            continue;
        }
        let name = req
            .names
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| format!("pctdev{gid}"));
        wants.push(GroupWant { gid, name });
    }
    // Every read and write below is relative to this one checked directory.
    let etc = match ns::CheckedDir::open("/etc") {
        Ok(Some(d)) => d,
        Ok(None) => {
            r.problems.push("/etc: not found".into());
            return Ok(r);
        }
        Err(e) => {
            r.problems.push(format!("gave up editing groups: {e}"));
            return Ok(r);
        }
    };
    let read = |name: &str| -> Result<Option<String>, String> {
        match etc.read(name, max)? {
            None => Ok(None),
            Some(b) => Ok(Some(
                group::check_text(&format!("/etc/{name}"), &b)?.to_string(),
            )),
        }
    };
    let group_text = match read("group") {
        Ok(Some(t)) => t,
        Ok(None) => {
            r.problems
                .push("/etc/group: not found; not creating one".into());
            return Ok(r);
        }
        Err(e) => {
            r.problems.push(format!("gave up editing groups: {e}"));
            return Ok(r);
        }
    };
    let gshadow = match read("gshadow") {
        Ok(t) => t,
        Err(e) => {
            r.problems.push(format!("gave up editing groups: {e}"));
            return Ok(r);
        }
    };
    let ix = group::index(&group_text);
    if let Some(n) = &r.name {
        r.member_of_before = ix.member_of.get(n).cloned().unwrap_or_default();
    }
    let member = if req.uid == 0 {
        None
    } else {
        r.name.as_deref()
    };
    let edit = match group::ensure_groups(&group_text, gshadow.as_deref(), &wants, member) {
        Ok(e) => e,
        Err(e) => {
            r.problems.push(format!("gave up editing groups: {e}"));
            return Ok(r);
        }
    };
    r.outcomes = edit.outcomes;
    // gshadow first: a group line without its gshadow line is what shadow's
    // tools tolerate; the reverse is not.
    let mut written = group_text.as_str();
    let mut gshadow_failed = false;
    if let Some(t) = &edit.gshadow {
        match etc.replace("gshadow", t.as_bytes(), 0o640) {
            Ok(()) => r.wrote.push("/etc/gshadow".into()),
            Err(e) => {
                r.problems.push(format!("gave up editing groups: {e}"));
                r.outcomes.clear();
                gshadow_failed = true;
            }
        }
    }
    if let (Some(t), false) = (&edit.group, gshadow_failed) {
        match etc.replace("group", t.as_bytes(), 0o644) {
            Ok(()) => {
                r.wrote.push("/etc/group".into());
                written = t.as_str();
            }
            Err(e) => {
                r.problems.push(format!("gave up editing groups: {e}"));
                r.outcomes.clear();
            }
        }
    }
    let after = group::index(written);
    if let Some(n) = &r.name {
        r.member_of_after = after.member_of.get(n).cloned().unwrap_or_default();
    }
    for n in DEVICE_GROUPS {
        if let Some(g) = after.by_name.get(*n) {
            r.groups_by_name.insert((*n).to_string(), *g);
        }
    }
    for g in &req.lookup_gids {
        if let Some(n) = after.by_gid.get(g) {
            match name_refusal("group", n) {
                None => {
                    r.names_by_gid.insert(*g, n.clone());
                }
                Some(why) => r.problems.push(format!("/etc/group: {why}")),
            }
        }
    }
    Ok(r)
}
