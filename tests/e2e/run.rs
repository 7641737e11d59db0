//! Running host commands for the bed: captured stdout and stderr, a deadline,
//! and Proxmox's `run_command` rule of reading both pipes until they close.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// One finished command.
#[derive(Debug, Clone)]
pub struct Run {
    /// What ran, for messages.
    pub cmdline: String,
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// From spawn until the process exited.
    pub exited_after: Duration,
    /// From spawn until stdout and stderr were both closed (by the process
    /// and every child that inherited them). `None`: still open at the
    /// deadline, so Proxmox would still be waiting.
    pub closed_after: Option<Duration>,
    /// The process itself did not exit before the deadline and was killed.
    pub timed_out: bool,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with the whole record unless the command exited 0.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(self.success(), "e2e: command failed: {self}");
        &self.stdout
    }

    /// How Proxmox's `run_command` words a failure.
    pub fn pve_failure(&self) -> Option<String> {
        match (self.code, self.signal) {
            (Some(0), _) => None,
            (Some(c), _) => Some(format!("command '{}' failed: exit code {c}", self.cmdline)),
            (None, Some(s)) => Some(format!(
                "command '{}' failed: received signal {s}",
                self.cmdline
            )),
            (None, None) => Some(format!("command '{}' failed", self.cmdline)),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` code={:?} signal={:?} timed_out={} exited_after={:?} closed_after={:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.cmdline,
            self.code,
            self.signal,
            self.timed_out,
            self.exited_after,
            self.closed_after,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `cmd` with stdin at EOF, captures stdout and stderr, and waits until
/// both pipes are closed, like Proxmox's `run_command`. Unlike Proxmox it
/// gives up after `deadline`: a process still running is killed, and pipes
/// still held open by a background child are reported as `closed_after:
/// None` (the reader threads are left to finish on their own).
pub fn run(cmd: &mut Command, deadline: Duration) -> Run {
    let cmdline = describe(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("e2e: cannot run `{cmdline}`: {e}"));
    let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
    for (i, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        let mut pipe = pipe.expect("piped");
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((i, buf));
        });
    }
    drop(tx);

    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => panic!("e2e: waiting for `{cmdline}`: {e}"),
        }
        if start.elapsed() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child
                .wait()
                .unwrap_or_else(|e| panic!("e2e: waiting for `{cmdline}`: {e}"));
        }
        thread::sleep(Duration::from_millis(2));
    };
    let exited_after = start.elapsed();

    let mut out = [Vec::new(), Vec::new()];
    let mut got = 0;
    while got < 2 {
        let left = deadline.saturating_sub(start.elapsed()) + Duration::from_millis(100);
        match rx.recv_timeout(left) {
            Ok((i, buf)) => {
                out[i] = buf;
                got += 1;
            }
            Err(_) => break,
        }
    }
    let closed_after = (got == 2).then(|| start.elapsed());
    use std::os::unix::process::ExitStatusExt;
    let [o, e] = out;
    Run {
        cmdline,
        code: status.code(),
        signal: status.signal(),
        stdout: String::from_utf8_lossy(&o).into_owned(),
        stderr: String::from_utf8_lossy(&e).into_owned(),
        exited_after,
        closed_after,
        timed_out,
    }
}

/// `prog arg1 arg2`, as Proxmox prints a command.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns
/// whether it held. For effects of the detached post-start worker.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
