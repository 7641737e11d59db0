//! The task-log style: Proxmox shows the hook's stderr one line per entry
//! in a narrow panel. A message is a short headline, then indented lines
//! (the reason, details, the fix). Its own line breaks mark those parts; a
//! part longer than [`WIDTH`] is wrapped at clause boundaries (`; `, then
//! `, `, then spaces). A `fix:` line is a command to copy: never wrapped.
//! Pure.

/// The widest line the task log should show.
pub const WIDTH: usize = 160;

/// The lines for `message` after `prefix` (like
/// `pct-passthrough 105 pre-start: warning: `): the first carries the
/// prefix, the others are indented by two spaces (wrapped parts by four).
pub fn lines(prefix: &str, message: &str) -> Vec<String> {
    lines_within(prefix, message, WIDTH)
}

/// [`lines`] for a total width of `width` (a caller that indents the
/// continuation lines further passes less).
pub fn lines_within(prefix: &str, message: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (i, part) in message.split('\n').enumerate() {
        let (lead, more) = if i == 0 {
            (prefix, "  ")
        } else {
            ("  ", "    ")
        };
        let part = part.trim();
        if part.starts_with("fix: ") {
            out.push(format!("{lead}{part}"));
            continue;
        }
        let first = width.saturating_sub(lead.chars().count());
        let rest = width.saturating_sub(more.len());
        for (j, p) in wrap(part, first, rest).into_iter().enumerate() {
            out.push(format!("{}{p}", if j == 0 { lead } else { more }));
        }
    }
    out
}

/// `text` in lines of at most `first` (then `rest`) characters: whole
/// clauses (cut after `; `) where they fit, else words; a word longer than
/// the width (a path) stays whole.
pub fn wrap(text: &str, first: usize, rest: usize) -> Vec<String> {
    // Bytes bound characters: a text this short is one line.
    if text.len() <= first {
        return vec![text.to_string()];
    }
    wrap_clauses(text, first, rest)
}

/// [`wrap`] without its one-line shortcut.
fn wrap_clauses(text: &str, first: usize, rest: usize) -> Vec<String> {
    let width = |n: usize| if n == 0 { first } else { rest };
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let clauses: Vec<String> = {
        let parts: Vec<&str> = text.split("; ").collect();
        let last = parts.len().saturating_sub(1);
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if i < last {
                    format!("{p};")
                } else {
                    (*p).to_string()
                }
            })
            .collect()
    };
    let len = |s: &str| s.chars().count();
    for clause in clauses {
        let joined = if cur.is_empty() {
            clause.clone()
        } else {
            format!("{cur} {clause}")
        };
        if len(&joined) <= width(out.len()) {
            cur = joined;
            continue;
        }
        if !cur.is_empty() && len(&clause) <= width(out.len() + 1) {
            out.push(std::mem::take(&mut cur));
            cur = clause;
            continue;
        }
        // The clause does not fit on a line of its own: cut it into words.
        for word in clause.split(' ') {
            let joined = if cur.is_empty() {
                word.to_string()
            } else {
                format!("{cur} {word}")
            };
            if len(&joined) <= width(out.len()) || cur.is_empty() {
                cur = joined;
            } else {
                out.push(std::mem::take(&mut cur));
                cur = word.to_string();
            }
        }
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PREFIX: &str = "pct-passthrough 105 pre-start: warning: ";

    #[test]
    fn headline_then_indented_parts_and_the_fix_unwrapped() {
        let fix = format!(
            "fix: pct set 105 --dev0 /dev/serial/by-id/{},gid=1000,uid=1000",
            "x".repeat(150)
        );
        let msg = format!("dev0 is missing\nProxmox fails this start\n{fix}");
        let l = lines(PREFIX, &msg);
        assert_eq!(l[0], format!("{PREFIX}dev0 is missing"));
        assert_eq!(l[1], "  Proxmox fails this start");
        assert_eq!(l[2], format!("  {fix}"));
    }

    #[test]
    fn a_long_part_is_cut_at_clauses() {
        let msg = format!(
            "lxc.mount.entry of /dev/serial/by-id/{} lacks optional; a device bind wants 'bind,optional,create=file' so an unplugged device does not fail the start",
            "y".repeat(90)
        );
        let l = lines(PREFIX, &msg);
        assert!(l.len() >= 2, "{l:#?}");
        assert!(l.iter().all(|x| x.chars().count() <= WIDTH), "{l:#?}");
        assert!(
            l.last().unwrap().starts_with("  a device bind wants"),
            "{l:#?}"
        );
    }

    proptest! {
        /// The one-line shortcut gives what the clause cutter gives.
        #[test]
        fn a_short_text_is_the_line_the_cutter_makes(text in "[a-z;, ]{0,40}", first in 0usize..50) {
            prop_assert_eq!(wrap(&text, first, 20), wrap_clauses(&text, first, 20));
        }

        /// Nothing is lost: the words come back in order; no line is wider
        /// than WIDTH unless it is one word (or a fix).
        #[test]
        fn keeps_every_word_and_the_width(words in proptest::collection::vec("[a-z/]{1,30}[;,]?", 1..60)) {
            let msg = words.join(" ");
            let l = lines(PREFIX, &msg);
            let back: Vec<String> = l.join(" ").trim_start_matches(PREFIX).split_whitespace().map(str::to_string).collect();
            let want: Vec<String> = msg.split_whitespace().map(str::to_string).collect();
            prop_assert_eq!(back, want);
            for x in &l {
                let single = x.trim().split(' ').count() == 1;
                prop_assert!(x.chars().count() <= WIDTH || single || x.starts_with(PREFIX) && x.trim_start_matches(PREFIX).split(' ').count() == 1, "{}", x);
            }
        }
    }
}
