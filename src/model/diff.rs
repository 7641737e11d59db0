//! Unified diffs for `plan`: one per file, each hunk headed by a one-line
//! reason. The diff itself comes from `similar`; this module picks the
//! reason for each hunk and renders the text. Pure.

use similar::{ChangeTag, TextDiff};

use crate::model::prestart::{FileChange, FileTarget};
use crate::model::tasklog;

/// One hunk: its `@@ -a,b +c,d @@` header and its lines, each with its
/// ` `/`-`/`+` prefix and its own line ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    pub header: String,
    pub lines: Vec<String>,
}

impl Hunk {
    /// The removed and added lines, without prefix or line ending.
    pub fn changed(&self) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter(|l| l.starts_with(['-', '+']))
            .map(|l| l[1..].trim_end_matches(['\n', '\r']))
    }
}

const CONTEXT: usize = 3;

/// The hunks that turn `old` into `new`, with three lines of context. A last
/// line without a newline gets diff's `\ No newline at end of file` marker.
pub fn hunks(old: &str, new: &str) -> Vec<Hunk> {
    let diff = TextDiff::from_lines(old, new);
    let mut udiff = diff.unified_diff();
    udiff.context_radius(CONTEXT);
    udiff
        .iter_hunks()
        .map(|h| {
            let mut lines = Vec::new();
            for change in h.iter_changes() {
                let sign = match change.tag() {
                    ChangeTag::Equal => ' ',
                    ChangeTag::Delete => '-',
                    ChangeTag::Insert => '+',
                };
                let value = change.value();
                let mut line = format!("{sign}{value}");
                if !value.ends_with('\n') {
                    line.push_str("\n\\ No newline at end of file\n");
                }
                lines.push(line);
            }
            Hunk {
                header: h.header().to_string(),
                lines,
            }
        })
        .collect()
}

/// Words of a line that can tie it to a reason: numbers and identifiers
/// longer than two characters (`20`, `ttyUSB0`, `lxc.idmap`).
fn tokens(s: &str) -> Vec<&str> {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '/'))
        .map(|t| t.trim_matches('.'))
        .filter(|t| t.len() > 2 || t.bytes().all(|b| b.is_ascii_digit()) && !t.is_empty())
        .collect()
}

/// The reason for one hunk, from the reasons the planner gave for its file:
/// the only one if there is one; else the one sharing the most words with the
/// hunk's changed lines (by their total length, so `/dev/ttyUSB0` counts
/// more than `20`); else all of them.
pub fn reason_for(hunk: &Hunk, reasons: &[String]) -> String {
    let headline = |r: &String| r.split('\n').next().unwrap_or("").to_string();
    match reasons {
        [] => "no reason recorded".to_string(),
        [one] => headline(one),
        _ => {
            let words: Vec<&str> = hunk.changed().flat_map(tokens).collect();
            let score = |r: &String| {
                let mut hit: Vec<&str> = tokens(r)
                    .into_iter()
                    .filter(|t| words.contains(t))
                    .collect();
                hit.sort_unstable();
                hit.dedup();
                hit.iter().map(|t| t.len()).sum::<usize>()
            };
            let best = reasons.iter().map(score).max().unwrap_or(0);
            let top: Vec<&String> = reasons.iter().filter(|r| score(r) == best).collect();
            if best > 0 && top.len() == 1 {
                headline(top[0])
            } else {
                reasons.iter().map(headline).collect::<Vec<_>>().join("; ")
            }
        }
    }
}

/// A whole-file unified diff with `--- a/<path>` and `+++ b/<path>` headers,
/// `/dev/null` for a new file, and the reason after each hunk header. Empty
/// when nothing changes.
pub fn render(path: &str, old: Option<&str>, new: &str, reasons: &[String]) -> String {
    let old_text = old.unwrap_or("");
    if old.is_some() && old_text == new {
        return String::new();
    }
    let rel = path.trim_start_matches('/');
    // Reasons with details (a reason's own lines after its headline) go in
    // a comment block before the file header, which diff tools ignore; each
    // hunk header carries the headline of its reason.
    let mut out = String::new();
    if reasons.iter().any(|r| r.contains('\n')) {
        for r in reasons {
            for (i, line) in r.split('\n').enumerate() {
                let lead = if i == 0 { "# " } else { "#   " };
                let width = tasklog::WIDTH - lead.len();
                for (j, piece) in tasklog::wrap(&one_line(line), width, width - 2)
                    .into_iter()
                    .enumerate()
                {
                    let more = if j == 0 { "" } else { "  " };
                    out.push_str(&format!("{lead}{more}{piece}\n"));
                }
            }
        }
    }
    out.push_str(&match old {
        Some(_) => format!("--- a/{rel}\n+++ b/{rel}\n"),
        None => format!("--- /dev/null\n+++ b/{rel}\n"),
    });
    for h in hunks(old_text, new) {
        let reason = reason_for(&h, reasons);
        out.push_str(&format!("{} {}\n", h.header, one_line(&reason)));
        for l in &h.lines {
            out.push_str(l);
        }
    }
    out
}

/// `plan`'s output: one diff per file an operator cares about (container
/// config, `/etc/subuid`, `/etc/subgid`, generated LXC config; the tool's
/// own state is left out), paths shown relative to `root`. Empty when
/// nothing would change.
pub fn render_changes(root: &str, changes: &[FileChange]) -> String {
    let order = |t: FileTarget| match t {
        FileTarget::PveConf => 0,
        FileTarget::Subuid => 1,
        FileTarget::Subgid => 2,
        FileTarget::LxcConfig => 3,
        FileTarget::State | FileTarget::StateInterim => 4,
    };
    let mut shown: Vec<&FileChange> = changes
        .iter()
        .filter(|c| !matches!(c.target, FileTarget::State | FileTarget::StateInterim))
        .collect();
    shown.sort_by_key(|c| order(c.target));
    let root = root.trim_end_matches('/');
    let mut out = String::new();
    for c in shown {
        let path = match c.path.strip_prefix(root) {
            Some(rest) if !root.is_empty() && rest.starts_with('/') => rest,
            _ => c.path.as_str(),
        };
        out.push_str(&render(path, c.old.as_deref(), &c.new, &c.reasons));
    }
    out
}

/// A reason on one line: newlines and runs of spaces folded.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn appends_with_context_and_reason() {
        let old = "arch: amd64\nhostname: z\nunprivileged: 1\n";
        let new = "arch: amd64\nhostname: z\nunprivileged: 1\nlxc.idmap: g 20 20 1\n";
        assert_eq!(
            render(
                "/etc/pve/lxc/105.conf",
                Some(old),
                new,
                &["pass gid 20 through".into()]
            ),
            "--- a/etc/pve/lxc/105.conf\n+++ b/etc/pve/lxc/105.conf\n@@ -1,3 +1,4 @@ pass gid 20 through\n arch: amd64\n hostname: z\n unprivileged: 1\n+lxc.idmap: g 20 20 1\n"
        );
    }

    #[test]
    fn new_file_and_missing_newline() {
        assert_eq!(
            render("/etc/subgid", None, "root:20:1\n", &["r".into()]),
            "--- /dev/null\n+++ b/etc/subgid\n@@ -0,0 +1 @@ r\n+root:20:1\n"
        );
        let d = render("/x", Some("a"), "a\nb\n", &["r".into()]);
        assert_eq!(
            d,
            "--- a/x\n+++ b/x\n@@ -1 +1,2 @@ r\n-a\n\\ No newline at end of file\n+a\n+b\n"
        );
    }

    #[test]
    fn changes_in_operator_order_without_state_and_relative_to_the_root() {
        let ch = |target, path: &str, old: Option<&str>, new: &str| FileChange {
            target,
            path: path.into(),
            old: old.map(str::to_string),
            new: new.into(),
            reasons: vec![format!("why {path}")],
            state: None,
        };
        let out = render_changes(
            "/tmp/r/",
            &[
                ch(
                    FileTarget::Subgid,
                    "/tmp/r/etc/subgid",
                    Some("a\n"),
                    "a\nroot:20:1\n",
                ),
                ch(
                    FileTarget::StateInterim,
                    "/tmp/r/var/lib/pct-passthrough/105.json",
                    None,
                    "{}",
                ),
                ch(
                    FileTarget::PveConf,
                    "/tmp/r/etc/pve/lxc/105.conf",
                    Some("x\n"),
                    "x\ny\n",
                ),
                ch(
                    FileTarget::LxcConfig,
                    "/elsewhere/config",
                    Some("c\n"),
                    "c\n",
                ),
            ],
        );
        assert_eq!(
            out,
            "--- a/etc/pve/lxc/105.conf\n+++ b/etc/pve/lxc/105.conf\n@@ -1 +1,2 @@ why /tmp/r/etc/pve/lxc/105.conf\n x\n+y\n\
             --- a/etc/subgid\n+++ b/etc/subgid\n@@ -1 +1,2 @@ why /tmp/r/etc/subgid\n a\n+root:20:1\n"
        );
        assert_eq!(render_changes("/", &[]), "");
    }

    #[test]
    fn unchanged_is_empty() {
        assert_eq!(render("/x", Some("a\n"), "a\n", &[]), "");
    }

    #[test]
    fn picks_the_reason_that_names_the_hunk() {
        let old: String = (0..20).map(|i| format!("line {i}\n")).collect();
        let new = old
            .replace("line 2\n", "line 2\nlxc.idmap: g 20 20 1\n")
            .replace("line 15\n", "line 15\ndev0: /dev/ttyUSB0,gid=20\n");
        let reasons = vec![
            "map gid 20 (dialout) 1:1 for lxc.idmap".to_string(),
            "device /dev/ttyUSB0 needs dev0".to_string(),
        ];
        let d = render("/c", Some(&old), &new, &reasons);
        let headers: Vec<&str> = d.lines().filter(|l| l.starts_with("@@")).collect();
        assert_eq!(
            headers,
            [
                "@@ -1,6 +1,7 @@ map gid 20 (dialout) 1:1 for lxc.idmap",
                "@@ -14,6 +15,7 @@ device /dev/ttyUSB0 needs dev0"
            ]
        );
        // No match: every reason.
        let h = &hunks("a\n", "b\n")[0];
        assert_eq!(reason_for(h, &reasons), reasons.join("; "));
        // A reason's headline heads the hunk; its details come before the
        // file header as comments.
        assert_eq!(reason_for(h, &["x\ny".into()]), "x");
        let d = render("/c", Some("a\n"), "b\n", &["x\n  y".into()]);
        assert!(d.starts_with("# x\n#   y\n--- a/c\n"), "{d}");
        assert!(d.contains("@@ x\n"), "{d}");
    }

    /// Applies a rendered diff to `old` (context checked): proves the hunks
    /// are exact.
    fn apply(old: &str, diff: &str) -> String {
        let old_lines: Vec<&str> = old.split_inclusive('\n').collect();
        let mut out = String::new();
        let mut at = 0usize;
        let mut lines = diff.split_inclusive('\n').skip(2).peekable();
        while let Some(l) = lines.next() {
            if let Some(rest) = l.strip_prefix("@@ -") {
                let start: usize = rest.split([',', ' ']).next().unwrap().parse().unwrap();
                let n = start.saturating_sub(1).max(at);
                for o in &old_lines[at..n] {
                    out.push_str(o);
                }
                at = n;
                continue;
            }
            let no_nl = lines.peek().is_some_and(|n| n.starts_with("\\ No newline"));
            let body = &l[1..];
            let body = if no_nl {
                lines.next();
                body.strip_suffix('\n').unwrap()
            } else {
                body
            };
            match &l[..1] {
                " " => {
                    assert_eq!(old_lines[at], body);
                    out.push_str(body);
                    at += 1;
                }
                "-" => {
                    assert_eq!(old_lines[at], body);
                    at += 1;
                }
                "+" => out.push_str(body),
                other => panic!("bad line {other:?}"),
            }
        }
        for o in &old_lines[at..] {
            out.push_str(o);
        }
        out
    }

    proptest! {
        #[test]
        fn diff_applies_back(
            old in proptest::collection::vec("[abc]{0,2}\n?", 0..30),
            new in proptest::collection::vec("[abc]{0,2}\n?", 0..30),
        ) {
            let old: String = old.concat();
            let new: String = new.concat();
            let d = render("/f", Some(&old), &new, &["r".into()]);
            if old == new {
                prop_assert_eq!(d, "");
            } else {
                prop_assert_eq!(apply(&old, &d), new);
            }
        }
    }
}
