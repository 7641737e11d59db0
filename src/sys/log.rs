//! The two log sinks: short human lines on stderr (the Proxmox task log) and
//! an audit trail in syslog (ident `pct-passthrough`). Syslog being
//! unavailable is never an error. Both sinks escape every message with
//! [`escape`]: a message may quote a container's user name, `comm` or file
//! text, and none of it reaches a terminal or the audit trail raw.

use std::io::Write;

use crate::model::escape::{escape, quoted};
use crate::model::event::{Event, Level};
use crate::model::tasklog;

type SyslogWriter = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

enum Syslog {
    NotTried,
    Open(Box<SyslogWriter>),
    Unavailable,
}

/// Logger for one run: `pct-passthrough <vmid> <phase>: ...` on stderr and
/// `vmid=… phase=… event=…` in syslog.
pub struct Log {
    vmid: String,
    phase: String,
    syslog: Syslog,
}

impl Log {
    pub fn new(vmid: impl ToString, phase: impl ToString) -> Log {
        Log {
            vmid: vmid.to_string(),
            phase: phase.to_string(),
            syslog: Syslog::NotTried,
        }
    }

    pub fn set_phase(&mut self, phase: impl ToString) {
        self.phase = phase.to_string();
    }

    /// The task-log prefix, as STYLE.md shows it.
    pub fn prefix(&self) -> String {
        if self.vmid.is_empty() {
            "pct-passthrough".to_string()
        } else {
            format!("pct-passthrough {} {}", self.vmid, self.phase)
        }
    }

    /// The task-log lines for `event` (`model::tasklog`'s style: a
    /// headline, then indented parts and the fix), each part escaped.
    pub fn task_line(&self, event: &Event) -> String {
        let level = match event.level {
            Level::Info => "",
            Level::Warn => "warning: ",
            Level::Error => "error: ",
        };
        let prefix = format!("{}: {level}", self.prefix());
        let mut text: Vec<String> = event
            .message
            .split('\n')
            .map(|part| escape(part).into_owned())
            .collect();
        if let Some(fix) = &event.fix {
            text.push(format!("fix: {}", escape(fix)));
        }
        let mut out = tasklog::lines(&prefix, &text.join("\n")).join("\n");
        out.push('\n');
        out
    }

    /// The syslog record for `event`: `key=value` fields, the message quoted
    /// and escaped.
    pub fn audit_record(&self, event: &Event) -> String {
        format!(
            "vmid={} phase={} event={} msg={}",
            escape(&self.vmid),
            escape(&self.phase),
            event.name,
            quoted(&match &event.fix {
                Some(fix) => format!("{} / fix: {fix}", event.message.replace('\n', " / ")),
                None => event.message.replace('\n', " / "),
            })
        )
    }

    pub fn emit(&mut self, event: &Event) {
        let line = self.task_line(event);
        // A closed stderr (detached worker) is fine.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        self.audit(event);
    }

    /// Syslog only: for detail the task log does not need.
    pub fn audit(&mut self, event: &Event) {
        if self.writer().is_none() {
            return;
        }
        let record = self.audit_record(event);
        if let Some(w) = self.writer() {
            let r = match event.level {
                Level::Info => w.info(&record),
                Level::Warn => w.warning(&record),
                Level::Error => w.err(&record),
            };
            if r.is_err() {
                self.syslog = Syslog::Unavailable;
            }
        }
    }

    pub fn emit_all(&mut self, events: &[Event]) {
        for e in events {
            self.emit(e);
        }
    }

    pub fn info(&mut self, name: &'static str, msg: impl Into<String>) {
        self.emit(&Event::info(name, msg));
    }

    pub fn warn(&mut self, name: &'static str, msg: impl Into<String>) {
        self.emit(&Event::warn(name, msg));
    }

    pub fn error(&mut self, name: &'static str, msg: impl Into<String>) {
        self.emit(&Event::error(name, msg));
    }

    fn writer(&mut self) -> Option<&mut SyslogWriter> {
        if let Syslog::NotTried = self.syslog {
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_DAEMON,
                hostname: None,
                process: "pct-passthrough".into(),
                pid: std::process::id(),
            };
            // Linux's one syslog socket (journald's or rsyslog's); the
            // crate's other paths are BSD's and macOS's.
            self.syslog = match syslog::unix_custom(formatter, "/dev/log") {
                Ok(w) => Syslog::Open(Box::new(w)),
                Err(_) => Syslog::Unavailable,
            };
        }
        match &mut self.syslog {
            Syslog::Open(w) => Some(w),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sinks_escape_container_text() {
        let log = Log::new(105, "post-start");
        let hostile = "runtime user evil\x1b]0;owned\x07\r\x1b[2J (comm \u{9b}1m)";
        let e = Event::warn("runtime-user", hostile);
        let line = log.task_line(&e);
        assert_eq!(
            line,
            "pct-passthrough 105 post-start: warning: runtime user evil\\x1b]0;owned\\x07\\x0d\\x1b[2J (comm \\x9b1m)\n"
        );
        let rec = log.audit_record(&e);
        assert_eq!(
            rec,
            "vmid=105 phase=post-start event=runtime-user msg=\"runtime user evil\\x1b]0;owned\\x07\\x0d\\x1b[2J (comm \\x9b1m)\""
        );
        for out in [&line[..line.len() - 1], &rec[..]] {
            assert!(!out.chars().any(char::is_control), "{out:?}");
        }
    }
}
