//! Host file reads with size limits, and the one atomic-replace helper every
//! write of the tool goes through.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use crate::model::text::{self, Limits};

/// Set to `1` by tests: the writer kills itself with SIGKILL right before
/// the rename, to prove a crash leaves the old file intact.
pub const CRASH_BEFORE_RENAME_ENV: &str = "PCT_PASSTHROUGH_TEST_CRASH_BEFORE_RENAME";

/// Reads at most `limits.max_bytes + 1` bytes of `path`. `Ok(None)` if it
/// does not exist.
pub fn read_bytes(path: &Path, limits: Limits) -> Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot open", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("{}: cannot stat", path.display()))?;
    if !meta.is_file() {
        return Err(anyhow!(
            "{}: not a regular file; replace it with a regular file",
            path.display()
        ));
    }
    let mut buf = Vec::with_capacity((meta.len() as usize).min(limits.max_bytes) + 1);
    file.take(limits.max_bytes as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if buf.len() > limits.max_bytes {
        // The read stopped one byte past the limit: the size is fstat's.
        let size = Some(meta.len()).filter(|&n| n > limits.max_bytes as u64);
        let error = text::TextError::TooLarge {
            size,
            max: limits.max_bytes,
        };
        let file = path.display().to_string();
        return Err(text::FileTextError { file, error }.into());
    }
    Ok(Some(buf))
}

/// Reads `path` as checked text. `Ok(None)` if it does not exist.
pub fn read_text(path: &Path, limits: Limits) -> Result<Option<String>> {
    let Some(bytes) = read_bytes(path, limits)? else {
        return Ok(None);
    };
    text::decode(&path.display().to_string(), &bytes, limits)?;
    // decode() proved it is UTF-8.
    Ok(Some(
        String::from_utf8(bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?,
    ))
}

/// The file a write to `path` must replace: symlinks are followed, so a
/// write to `/etc/pve/lxc/105.conf` lands in `/etc/pve/nodes/<node>/lxc`.
pub fn resolve_write_target(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file path", path.display()))?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            if let Ok(real) = fs::canonicalize(path) {
                return Ok(real);
            }
            // Dangling link: write where it points.
            let link = fs::read_link(path)?;
            let parent = path.parent().unwrap_or(Path::new("/"));
            resolve_write_target(&parent.join(link))
        }
        _ => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let real_parent = fs::canonicalize(parent)
                .with_context(|| format!("{}: cannot resolve directory", parent.display()))?;
            Ok(real_parent.join(name))
        }
    }
}

/// Errors that mean "this filesystem does not do fsync" (pmxcfs and others).
fn fsync_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) | Some(libc::EROFS)
    )
}

fn sync_tolerant(file: &File, what: &Path) -> Result<()> {
    match file.sync_all() {
        Ok(()) => Ok(()),
        Err(e) if fsync_unsupported(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("{}: fsync failed", what.display())),
    }
}

/// Atomically replaces `path` with `contents`: a temp file `<name>.tmp.<pid>`
/// in the same (real) directory, the old mode and owner, fsync where the
/// filesystem has it, rename, fsync of the directory. A new file gets
/// `new_mode`. Never truncates in place.
pub fn replace_file(path: &Path, contents: &[u8], new_mode: u32) -> Result<()> {
    let target = resolve_write_target(path)?;
    let dir = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    let name = target
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file path", target.display()))?;
    let old = match fs::metadata(&target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("{}: cannot stat", target.display())),
    };
    let mode = old.as_ref().map_or(new_mode, |m| m.mode() & 0o7777);
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = write_temp_and_rename(&tmp, &target, &dir, contents, mode, old.as_ref());
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_temp_and_rename(
    tmp: &Path,
    target: &Path,
    dir: &Path,
    contents: &[u8],
    mode: u32,
    old: Option<&fs::Metadata>,
) -> Result<()> {
    // A leftover from a crashed run with our pid.
    let _ = fs::remove_file(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .with_context(|| format!("{}: cannot create temp file", tmp.display()))?;
    file.write_all(contents)
        .with_context(|| format!("{}: write failed", tmp.display()))?;
    if let Some(m) = old {
        let now = file.metadata()?;
        if now.uid() != m.uid() || now.gid() != m.gid() {
            std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid())).with_context(|| {
                format!(
                    "{}: cannot keep owner {}:{}",
                    tmp.display(),
                    m.uid(),
                    m.gid()
                )
            })?;
        }
    }
    if mode != 0o600 {
        file.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("{}: cannot set mode {mode:o}", tmp.display()))?;
    }
    sync_tolerant(&file, tmp)?;
    drop(file);
    if std::env::var_os(CRASH_BEFORE_RENAME_ENV).is_some_and(|v| v == "1") {
        // Test hook: die as a crash would.
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    fs::rename(tmp, target)
        .with_context(|| format!("{}: cannot rename into place", target.display()))?;
    if let Ok(d) = File::open(dir) {
        sync_tolerant(&d, dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn replaces_and_keeps_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        replace_file(&p, b"new", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn new_file_gets_new_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n");
        replace_file(&p, b"x", 0o644).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o644);
    }

    #[test]
    fn writes_through_a_symlinked_directory_and_file() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("nodes/pve1/lxc");
        fs::create_dir_all(&real).unwrap();
        symlink("nodes/pve1/lxc", d.path().join("lxc")).unwrap();
        fs::write(real.join("105.conf"), "a").unwrap();
        replace_file(&d.path().join("lxc/105.conf"), b"b", 0o640).unwrap();
        assert_eq!(fs::read(real.join("105.conf")).unwrap(), b"b");
        assert!(fs::symlink_metadata(d.path().join("lxc"))
            .unwrap()
            .file_type()
            .is_symlink());

        symlink("lxc/105.conf", d.path().join("link.conf")).unwrap();
        replace_file(&d.path().join("link.conf"), b"c", 0o640).unwrap();
        assert_eq!(fs::read(real.join("105.conf")).unwrap(), b"c");
        assert!(fs::symlink_metadata(d.path().join("link.conf"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn read_text_limits_and_missing() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_text(&d.path().join("none"), Limits::HOST_FILE)
            .unwrap()
            .is_none());
        let p = d.path().join("big");
        fs::write(&p, vec![b'a'; 2 << 20]).unwrap();
        let e = read_text(&p, Limits::PVE_CONFIG).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        let e = read_text(d.path(), Limits::PVE_CONFIG)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
