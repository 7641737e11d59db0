//! What the process needs before it does anything else. `main` skips the
//! Rust runtime's own start-up (see `src/main.rs`) and calls [`process`].

use std::os::fd::RawFd;

/// Fds 0 to 2 open (a closed one on `/dev/null`, so no file this run opens
/// lands on fd 2 and gets task-log lines), SIGPIPE ignored (a task log
/// that went away must not kill a run between a temp file and its
/// rename), and the umask Proxmox runs hookscripts with.
pub fn process() {
    reopen_closed_std_fds();
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE, set before any
    // other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    crate::sys::fs::normalize_umask();
}

fn reopen_closed_std_fds() {
    let mut fds: [libc::pollfd; 3] = std::array::from_fn(|fd| libc::pollfd {
        fd: fd as RawFd,
        events: 0,
        revents: 0,
    });
    let polled = loop {
        // SAFETY: `fds` is a valid array of three pollfd for the whole call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
        if r != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break r != -1;
        }
    };
    for (fd, p) in fds.iter().enumerate() {
        let fd = fd as RawFd;
        let closed = if polled {
            p.revents & libc::POLLNVAL != 0
        } else {
            // SAFETY: F_GETFD only asks whether `fd` is open.
            (unsafe { libc::fcntl(fd, libc::F_GETFD) }) == -1
        };
        if closed {
            // SAFETY: a NUL-terminated path; the lowest free fd is `fd`
            // itself, as the ones below it are open.
            let got = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if got != fd {
                // No /dev/null: nothing this process writes is safe.
                std::process::abort();
            }
        }
    }
}
