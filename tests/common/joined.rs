//! Task-log text for tests: shared by `tests/common` and the e2e bed.

/// The task log with each message on one line: the indented lines the tool
/// writes under a headline (details, wrapped parts, the fix) joined onto it
/// with a space, so a test can look for a whole message. The line style
/// itself is checked by `tests/task_log_style.rs`.
pub fn joined(raw: &str) -> String {
    let mut out = String::new();
    for line in raw.lines() {
        if line.starts_with("  ") && !out.is_empty() {
            out.pop();
            out.push(' ');
            out.push_str(line.trim_start());
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}
