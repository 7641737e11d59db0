//! Static C helpers the test containers run (entrypoints that drop
//! privileges the way `su-exec` does, hostile programs): compiled on the
//! host with `cc -static`, copied into a rootfs by `CtBuilder::file`.

use std::fs;
use std::process::Command;

/// Compiles `src` (C) into a static binary, returned as bytes.
pub fn static_c(name: &str, src: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join(format!("{name}.c"));
    fs::write(&c, src).unwrap();
    let out = dir.path().join(name);
    let r = Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&out)
        .arg(&c)
        .output()
        .expect("cc");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    fs::read(out).unwrap()
}

/// `dropto uid gid cmd...`: sets the given uid and gid and **no**
/// supplementary groups, then execs, like `su-exec uid:gid`.
pub const DROPTO: &str = r#"#include <grp.h>
#include <stdlib.h>
#include <unistd.h>
int main(int c, char **v) {
    if (c < 4) return 2;
    if (setgroups(0, NULL) || setgid((gid_t)atoi(v[2])) || setuid((uid_t)atoi(v[1]))) return 3;
    execv(v[3], v + 3);
    return 4;
}
"#;
