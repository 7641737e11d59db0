//! Text a container controls (user and group names, `comm`, file contents
//! quoted in a message) made safe for a terminal or a log line, and the
//! name rule of shadow's `useradd`/`groupadd`.
//!
//! [`escape`] is the one function every human-facing sink applies: the task
//! log (stderr), syslog, `status` and `doctor`.

use std::borrow::Cow;
use std::fmt::Write;

/// Longest user or group name accepted: shadow's `GROUP_NAME_MAX_LENGTH`
/// default and the `ut_user` size of utmp.
pub const MAX_NAME: usize = 32;

/// Is `c` shown as an escape? Control characters (C0, DEL, C1), the line
/// and paragraph separators, and the invisible format characters that
/// reorder or hide text (bidi overrides and isolates, zero-width ones, BOM).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{061c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

/// `s` with every control or invisible character written as `\xNN` (below
/// U+0100) or `\u{NNNN}`, and `\` as `\\`. Printable UTF-8 is kept, so a
/// name like `jürgen` reads as itself. Unchanged text is not copied.
pub fn escape(s: &str) -> Cow<'_, str> {
    // Printable ASCII needs no escape; only other text is read as chars.
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'\\';
    if s.bytes().all(plain) || !s.chars().any(|c| c == '\\' || needs_escape(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if needs_escape(c) {
            let n = u32::from(c);
            if n < 0x100 {
                let _ = write!(out, "\\x{n:02x}");
            } else {
                let _ = write!(out, "\\u{{{n:04x}}}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` between double quotes, escaped, with `"` as `\"`: a `key="value"`
/// field of an audit record that the value cannot break out of.
pub fn quoted(s: &str) -> String {
    format!("\"{}\"", escape(s).replace('"', "\\\""))
}

/// Bytes from a file, escaped as [`escape`] does, invalid UTF-8 as `\xNN`.
pub fn escape_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        out.push_str(&escape(chunk.valid()));
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// Would shadow's `useradd`/`groupadd` accept `name` (without `--badname`)?
/// Its rule (`lib/chkname.c`, `is_valid_name`): `[A-Za-z0-9_.][A-Za-z0-9_.-]*`
/// with an optional final `$`, not `.` or `..`, not all digits; and at most
/// [`MAX_NAME`] bytes.
pub fn shadow_accepts(name: &str) -> bool {
    let b = name.as_bytes();
    let Some((&first, rest)) = b.split_first() else {
        return false;
    };
    let body_ok = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-');
    let rest = rest.strip_suffix(b"$").unwrap_or(rest);
    b.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && (first.is_ascii_alphanumeric() || matches!(first, b'_' | b'.'))
        && rest.iter().all(|&c| body_ok(c))
        && !b.iter().all(u8::is_ascii_digit)
}

/// `None` if shadow accepts `name`, else why not, with the name escaped.
pub fn name_refusal(kind: &str, name: &str) -> Option<String> {
    if shadow_accepts(name) {
        return None;
    }
    Some(format!(
        "{kind} name \"{}\" is one shadow's useradd/groupadd would refuse (letters, digits, _ . - and a final $, at most {MAX_NAME} bytes, not all digits); skipped",
        escape(name)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn terminal_controls_are_escaped() {
        assert_eq!(escape("a\x1b[2Jb\x07\rc"), "a\\x1b[2Jb\\x07\\x0dc");
        assert_eq!(escape("x\ny\tz\x7f"), "x\\x0ay\\x09z\\x7f");
        assert_eq!(escape("\u{9b}31m"), "\\x9b31m");
        assert_eq!(escape("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(escape("a\u{200b}b\u{feff}"), "a\\u{200b}b\\u{feff}");
        assert_eq!(escape("back\\x1b"), "back\\\\x1b");
    }

    #[test]
    fn printable_text_is_kept_and_not_copied() {
        for s in ["", "dialout", "jürgen", "名前", "a b \"c\" 'd'", "émoji 🎉"] {
            assert!(matches!(escape(s), Cow::Borrowed(_)), "{s}");
        }
    }

    #[test]
    fn quoted_fields_cannot_be_broken_out_of() {
        assert_eq!(quoted(r#"a "b" c"#), r#""a \"b\" c""#);
        assert_eq!(quoted("x\ny=1"), r#""x\x0ay=1""#);
    }

    #[test]
    fn bytes_escape_invalid_utf8() {
        assert_eq!(escape_bytes(b"ok\xff\x1b\xc3\xa9"), "ok\\xff\\x1bé");
    }

    #[test]
    fn shadow_name_rule() {
        for ok in [
            "root",
            "www-data",
            "_apt",
            "systemd-network",
            "a.b",
            "Admin",
            "9front",
            "machine$",
            ".hidden",
        ] {
            assert!(shadow_accepts(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "12345",
            "a b",
            "a:b",
            "a$b",
            "$",
            "evil\x1b[31m",
            "bell\x07",
            "cr\r",
            "jürgen",
            &"a".repeat(33),
        ] {
            assert!(!shadow_accepts(bad), "{bad:?}");
            assert!(name_refusal("user", bad).unwrap().contains("skipped"));
        }
        assert!(name_refusal("group", "dialout").is_none());
        let why = name_refusal("user", "x\x1b]0;pwn\x07").unwrap();
        assert!(!why.chars().any(char::is_control), "{why}");
    }

    proptest! {
        #[test]
        fn escaped_text_has_no_control_and_round_trips(s in any::<String>()) {
            let e = escape(&s);
            prop_assert!(!e.chars().any(needs_escape));
            prop_assert_eq!(unescape(&e), s);
        }
    }

    /// The inverse, to show [`escape`] loses nothing.
    fn unescape(s: &str) -> String {
        let mut out = String::new();
        let mut it = s.chars().peekable();
        while let Some(c) = it.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match it.next() {
                Some('\\') => out.push('\\'),
                Some('x') => {
                    let h: String = it.by_ref().take(2).collect();
                    out.push(char::from_u32(u32::from_str_radix(&h, 16).unwrap()).unwrap());
                }
                Some('u') => {
                    let h: String = it.by_ref().skip(1).take_while(|&c| c != '}').collect();
                    out.push(char::from_u32(u32::from_str_radix(&h, 16).unwrap()).unwrap());
                }
                other => panic!("bad escape {other:?}"),
            }
        }
        out
    }
}
