//! Hookscript chaining through the real binary against a temp root: the
//! chained script gets the same argv, runs before our work in pre-start and
//! blocks it there, only warns in the other phases, and is never ourselves.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");

/// Appends its argv to `calls` and exits with the number in `rc` (default 0).
const RECORDER: &str = "#!/bin/sh\nd=$(dirname \"$0\")\necho \"$*\" >>\"$d/calls\"\necho \"recorder: $2\" >&2\nrc=$(cat \"$d/rc\" 2>/dev/null || echo 0)\n[ \"$rc\" = 0 ] || echo \"recorder: refusing $1\" >&2\nexit \"$rc\"\n";

struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Host {
    fn new(policy: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let h = Host { _dir: dir, root };
        h.write(
            "etc/pve/lxc/105.conf",
            "arch: amd64\nhookscript: local:snippets/pct-passthrough\nunprivileged: 1\n",
        );
        h.write(
            "etc/pve/storage.cfg",
            "dir: local\n\tpath /var/lib/vz\n\tcontent snippets\n\ndir: hooks\n\tpath /srv/hooks\n\tcontent snippets\n",
        );
        h.write("etc/pve/pct-passthrough/105.toml", policy);
        for dir in ["var/lib/vz/snippets", "srv/hooks/snippets"] {
            let p = format!("{dir}/rec.sh");
            h.write(&p, RECORDER);
            fs::set_permissions(h.root.join(p), fs::Permissions::from_mode(0o755)).unwrap();
        }
        h
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn calls(&self, dir: &str) -> String {
        fs::read_to_string(self.root.join(dir).join("calls")).unwrap_or_default()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("PCT_PASSTHROUGH_ROOT", &self.root)
            .output()
            .unwrap()
    }
}

/// stderr with each task-log message on one line.
fn stderr(o: &Output) -> String {
    common::joined(&String::from_utf8_lossy(&o.stderr))
}

#[test]
fn same_argv_in_every_phase_and_unknown_ones() {
    let h = Host::new("chain = \"local:snippets/rec.sh\"\n");
    for phase in [
        "pre-start",
        "post-start",
        "pre-stop",
        "post-stop",
        "pre-migrate",
    ] {
        let o = h.run(&["105", phase]);
        assert_eq!(o.status.code(), Some(0), "{phase}: {}", stderr(&o));
        assert!(stderr(&o).contains(&format!("recorder: {phase}")));
    }
    assert_eq!(
        h.calls("var/lib/vz/snippets"),
        "105 pre-start\n105 post-start\n105 pre-stop\n105 post-stop\n105 pre-migrate\n"
    );
}

#[test]
fn other_directory_storage_resolves_through_storage_cfg() {
    let h = Host::new("chain = \"hooks:snippets/rec.sh\"\n");
    assert_eq!(h.run(&["105", "pre-stop"]).status.code(), Some(0));
    assert_eq!(h.calls("srv/hooks/snippets"), "105 pre-stop\n");
    assert_eq!(h.calls("var/lib/vz/snippets"), "");
}

#[test]
fn failure_blocks_pre_start_only() {
    let h = Host::new("chain = \"local:snippets/rec.sh\"\n");
    h.write("var/lib/vz/snippets/rc", "3\n");
    let o = h.run(&["105", "pre-start"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("recorder: refusing 105"), "its own message: {e}");
    assert!(
        e.contains("pct-passthrough 105 pre-start: error: chained hookscript local:snippets/rec.sh failed (exit code 3) fix: fix it, or remove 'chain' from"),
        "{e}"
    );
    for phase in ["post-start", "pre-stop", "post-stop"] {
        let o = h.run(&["105", phase]);
        assert_eq!(o.status.code(), Some(0), "{phase}");
        assert!(stderr(&o)
            .contains("warning: chained hookscript local:snippets/rec.sh failed (exit code 3)"));
    }
}

#[test]
fn runs_before_our_own_work_in_pre_start() {
    // With the hook disabled, pre-start's own work is one log line; the
    // chained script (still run: it is the admin's) must come first.
    let h = Host::new("enabled = false\nchain = \"local:snippets/rec.sh\"\n");
    let e = stderr(&h.run(&["105", "pre-start"]));
    let chained = e.find("recorder: pre-start").expect(&e);
    let ours = e.find("disabled by policy").expect(&e);
    assert!(chained < ours, "{e}");
}

#[test]
fn dry_run_does_not_run_it() {
    let h = Host::new("chain = \"local:snippets/rec.sh\"\n");
    let o = h.run(&["--phase", "pre-start", "105", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("dry run: would run chained hookscript local:snippets/rec.sh"));
    assert_eq!(h.calls("var/lib/vz/snippets"), "");
}

#[test]
fn refuses_itself_and_broken_chains() {
    let cases: &[(&str, &str)] = &[
        (
            "local:snippets/pct-passthrough",
            "is this container's own hookscript",
        ),
        ("local:snippets/me", "is pct-passthrough itself"),
        (
            "local:snippets/missing.sh",
            "does not exist; copy the hookscript there",
        ),
        ("local:snippets/noexec.sh", "not executable; run 'chmod +x"),
        ("local:iso/rec.sh", "write it as <storage>:snippets/<file>"),
        ("nope:snippets/rec.sh", "storage 'nope' is not defined"),
    ];
    for (volume, want) in cases {
        let h = Host::new(&format!("chain = \"{volume}\"\n"));
        symlink(BIN, h.root.join("var/lib/vz/snippets/me")).unwrap();
        h.write("var/lib/vz/snippets/noexec.sh", "#!/bin/sh\n");
        let o = h.run(&["105", "pre-start"]);
        assert_eq!(o.status.code(), Some(1), "{volume}");
        let e = stderr(&o);
        assert!(e.contains(want), "{volume}: {e}");
        assert!(e.contains("'chain' in "), "names the policy: {e}");
        // Elsewhere a warning, and the phase still succeeds.
        let o = h.run(&["105", "post-stop"]);
        assert_eq!(o.status.code(), Some(0));
        assert!(stderr(&o).contains("warning:"), "{volume}");
    }
}
