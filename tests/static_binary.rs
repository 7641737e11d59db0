//! The binary is static: no ELF interpreter, no shared-library dependencies.
//! Proxmox runs it from a snippets storage on any node, with any libc.

use std::path::{Path, PathBuf};

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;

/// Returns (has an interpreter, number of DT_NEEDED entries).
fn dynamic_facts(path: &Path) -> (bool, usize) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is ELF", path.display());
    assert_eq!(b[4], 2, "64-bit");
    assert_eq!(b[5], 1, "little endian");
    let phoff = u64_at(&b, 0x20) as usize;
    let phentsize = u16_at(&b, 0x36) as usize;
    let phnum = u16_at(&b, 0x38) as usize;
    let mut interp = false;
    let mut needed = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(&b, ph) {
            PT_INTERP => interp = true,
            PT_DYNAMIC => {
                let off = u64_at(&b, ph + 8) as usize;
                let size = u64_at(&b, ph + 32) as usize;
                for d in (off..off + size).step_by(16) {
                    match u64_at(&b, d) {
                        0 => break,
                        DT_NEEDED => needed += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (interp, needed)
}

#[test]
fn the_test_binary_is_static() {
    let bin = Path::new(env!("CARGO_BIN_EXE_pct-passthrough"));
    assert_eq!(
        dynamic_facts(bin),
        (false, 0),
        "{} must be static",
        bin.display()
    );
}

#[test]
fn the_release_binary_is_static_and_small() {
    // scripts/test.sh builds it before the tests run.
    let rel = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-gnu/release/pct-passthrough");
    let Ok(meta) = std::fs::metadata(&rel) else {
        panic!(
            "{} is missing: run `cargo build --release` first (scripts/test.sh does)",
            rel.display()
        );
    };
    assert_eq!(
        dynamic_facts(&rel),
        (false, 0),
        "{} must be static",
        rel.display()
    );
    assert!(
        meta.len() < 3 << 20,
        "release binary is {} bytes; the target is under 3 MiB",
        meta.len()
    );
}

#[test]
fn a_dynamic_binary_is_detected() {
    // The check itself can fail: /bin/sh on Debian is dynamic.
    let (interp, needed) = dynamic_facts(Path::new("/bin/sh"));
    assert!(interp && needed > 0);
}
