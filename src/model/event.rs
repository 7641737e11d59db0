//! What the pure core reports. Phases turn these into task-log lines and
//! syslog records at the boundary; the core itself never logs.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// One thing that happened or was decided, for the task log and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub level: Level,
    /// Short machine name for syslog's `event=` field, like `idmap-inject`.
    pub name: &'static str,
    /// One human line, lowercase start, no trailing period.
    pub message: String,
    /// What to do about it, when there is something to do.
    pub fix: Option<String>,
}

impl Event {
    pub fn info(name: &'static str, message: impl Into<String>) -> Event {
        Event {
            level: Level::Info,
            name,
            message: message.into(),
            fix: None,
        }
    }
    pub fn warn(name: &'static str, message: impl Into<String>) -> Event {
        Event {
            level: Level::Warn,
            name,
            message: message.into(),
            fix: None,
        }
    }
    pub fn error(name: &'static str, message: impl Into<String>) -> Event {
        Event {
            level: Level::Error,
            name,
            message: message.into(),
            fix: None,
        }
    }
}

impl Event {
    /// The same event with what to do about it.
    pub fn with_fix(mut self, fix: impl Into<String>) -> Event {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.level {
            Level::Info => f.write_str(&self.message)?,
            Level::Warn => write!(f, "warning: {}", self.message)?,
            Level::Error => write!(f, "error: {}", self.message)?,
        }
        match &self.fix {
            Some(fix) => write!(f, "\nfix: {fix}"),
            None => Ok(()),
        }
    }
}
