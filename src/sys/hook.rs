//! Runs another hookscript (the one a policy chains) as Proxmox would: the
//! file itself, no shell, `<vmid> <phase>`, stdin at EOF, stdout and stderr
//! straight into the task log.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{anyhow, Context, Result};

/// True when `path` is the very file this process runs from (same device
/// and inode), so chaining to it would recurse.
pub fn is_this_binary(path: &Path) -> bool {
    let Ok(target) = fs::metadata(path) else {
        return false;
    };
    let Ok(me) = fs::metadata("/proc/self/exe") else {
        return false;
    };
    target.dev() == me.dev() && target.ino() == me.ino()
}

/// Checks what PVE's `check_hookscript` checks: a regular, executable file.
pub fn check_runnable(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("{}: cannot stat", path.display()))?;
    if !meta.is_file() {
        return Err(anyhow!("{}: not a regular file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(anyhow!(
            "{}: not executable; run 'chmod +x {}'",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Runs `path <vmid> <phase>` and waits for it.
pub fn run_hook(path: &Path, vmid: &str, phase: &str) -> Result<ExitStatus> {
    Command::new(path)
        .arg(vmid)
        .arg(phase)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("{}: cannot run", path.display()))
}
