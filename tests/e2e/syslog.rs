//! A syslog stand-in: this machine has no syslog daemon, so the bed binds
//! `/dev/log` itself and keeps every datagram, so tests can read what the
//! hook (and its detached post-start worker) logged.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub const DEV_LOG: &str = "/dev/log";

/// Listens on `/dev/log` until dropped; then removes the socket.
pub struct SyslogCapture {
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SyslogCapture {
    /// Binds `/dev/log`. A socket nobody listens on (left by a crashed
    /// run) is replaced; a live one (a real syslog daemon) is left alone
    /// and `None` is returned.
    pub fn start() -> Option<SyslogCapture> {
        if Path::new(DEV_LOG).exists() {
            let probe = UnixDatagram::unbound().ok()?;
            if probe.connect(DEV_LOG).is_ok() {
                return None;
            }
            let _ = fs::remove_file(DEV_LOG);
        }
        let sock = UnixDatagram::bind(DEV_LOG)
            .unwrap_or_else(|e| panic!("e2e: cannot bind {DEV_LOG}: {e}"));
        let _ = fs::set_permissions(DEV_LOG, fs::Permissions::from_mode(0o666));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set_read_timeout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (lines, stop) = (lines.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let msg = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
                        lines.lock().expect("syslog lines").push(msg);
                    }
                }
            })
        };
        Some(SyslogCapture {
            lines,
            stop,
            thread: Some(thread),
        })
    }

    /// Every message received so far, raw (`<PRI>timestamp host tag: msg`).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("syslog lines").clone()
    }
}

impl Drop for SyslogCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(DEV_LOG);
    }
}
