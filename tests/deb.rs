//! scripts/build-deb.sh: the package builds from the test binary, lists the
//! expected files, carries the right version, a man page made from --help,
//! the full license text, and example policies that the strict policy parser
//! accepts; Debian's own checker, lintian, finds nothing wrong with it.

use std::path::Path;
use std::process::Command;

use pct_passthrough::model::policy::Policy;

const BIN: &str = env!("CARGO_BIN_EXE_pct-passthrough");

fn dpkg_deb(args: &[&str]) -> String {
    let o = Command::new("dpkg-deb").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "dpkg-deb {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the package into `out` with `compression` and returns its path.
fn build(out: &Path, compression: &str) -> String {
    let o = Command::new("bash")
        .arg(repo().join("scripts/build-deb.sh"))
        .args(["--binary", BIN, "--compression", compression, "--out"])
        .arg(out)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[test]
fn package_builds_with_the_expected_contents() {
    let out = tempfile::tempdir().unwrap();
    let deb = build(out.path(), "none");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.ends_with(&format!("pct-passthrough_{version}_amd64.deb")),
        "{deb}"
    );
    // The README's quick start installs from where the script writes by default.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let quick = readme
        .split("## Quick start")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    assert!(
        quick.contains(&format!(
            "apt install ./target/debian/pct-passthrough_{version}_amd64.deb"
        )),
        "{quick}"
    );

    // `dpkg-deb -c`: mode, owner, path of every regular file.
    let listing = dpkg_deb(&["-c", &deb]);
    let mut files: Vec<String> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {}", f[0], f[1], f[5])
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "-rw-r--r-- root/root ./usr/lib/udev/rules.d/99-pct-passthrough.rules",
            "-rw-r--r-- root/root ./usr/share/doc/pct-passthrough/README.md",
            "-rw-r--r-- root/root ./usr/share/doc/pct-passthrough/changelog.gz",
            "-rw-r--r-- root/root ./usr/share/doc/pct-passthrough/copyright",
            "-rw-r--r-- root/root ./usr/share/doc/pct-passthrough/examples/policies/media-dir.toml",
            "-rw-r--r-- root/root ./usr/share/doc/pct-passthrough/examples/policies/render-node.toml",
            "-rw-r--r-- root/root ./usr/share/doc/pct-passthrough/examples/policies/zigbee-stick.toml",
            "-rw-r--r-- root/root ./usr/share/lintian/overrides/pct-passthrough",
            "-rw-r--r-- root/root ./usr/share/man/man1/pct-passthrough.1.gz",
            "-rw-r--r-- root/root ./usr/share/pct-passthrough/hooks/README.md",
            "-rw-r--r-- root/root ./usr/share/pct-passthrough/install/common.sh",
            "-rwxr-xr-x root/root ./usr/bin/pct-passthrough",
            "-rwxr-xr-x root/root ./usr/share/pct-passthrough/hooks/example-chained-hook.sh",
            "-rwxr-xr-x root/root ./usr/share/pct-passthrough/install/install.sh",
            "-rwxr-xr-x root/root ./usr/share/pct-passthrough/install/uninstall.sh",
        ]
    );
    assert!(
        listing.contains(" 2023-11-14 "),
        "dates from SOURCE_DATE_EPOCH: {listing}"
    );
    assert_eq!(
        dpkg_deb(&["-f", &deb, "Package", "Version", "Architecture"]),
        format!("Package: pct-passthrough\nVersion: {version}\nArchitecture: amd64\n")
    );

    // Unpack and look inside.
    let x = out.path().join("x");
    dpkg_deb(&["-x", &deb, x.to_str().unwrap()]);
    // The packaged binary is BIN stripped as dh_strip would: same program.
    let packaged = x.join("usr/bin/pct-passthrough");
    for arg in ["--version", "--help"] {
        let run = |bin: &Path| Command::new(bin).arg(arg).output().unwrap().stdout;
        assert_eq!(run(&packaged), run(Path::new(BIN)), "{arg}");
    }
    let sections = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(&packaged)
        .output()
        .unwrap();
    let sections = String::from_utf8(sections.stdout).unwrap();
    assert!(sections.contains(" .text "), "{sections}");
    for gone in [" .symtab ", " .comment ", " .debug_info "] {
        assert!(!sections.contains(gone), "{gone} in {sections}");
    }
    // The udev rule runs the packaged binary's udev entry for tty and DRM
    // adds and removes, with arguments the binary accepts.
    let rule =
        std::fs::read_to_string(x.join("usr/lib/udev/rules.d/99-pct-passthrough.rules")).unwrap();
    assert!(rule.contains(r#"SUBSYSTEM!="tty|drm""#), "{rule}");
    assert!(rule.contains(r#"ACTION!="add|remove""#), "{rule}");
    let run = rule
        .lines()
        .find_map(|l| l.strip_prefix("RUN+=\""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap();
    assert_eq!(
        run,
        "/usr/bin/pct-passthrough udev $env{ACTION} $env{DEVNAME}"
    );
    let r = Command::new(&packaged)
        .args(["udev", "change", "/dev/ttyUSB0"])
        .output()
        .unwrap();
    assert!(
        r.status.success() && r.stdout.is_empty() && r.stderr.is_empty(),
        "{r:?}"
    );
    // The copyright file carries the whole license: Debian 12 has no
    // /usr/share/common-licenses/AGPL-3 to point at.
    let copyright =
        std::fs::read_to_string(x.join("usr/share/doc/pct-passthrough/copyright")).unwrap();
    assert!(!copyright.contains("common-licenses"), "{copyright}");
    let license = std::fs::read_to_string(repo().join("LICENSE")).unwrap();
    let unindented: String = copyright
        .lines()
        .skip_while(|l| !l.contains("GNU AFFERO GENERAL PUBLIC LICENSE"))
        .map(|l| match l {
            " ." => "\n".to_string(),
            l => format!("{}\n", l.strip_prefix(' ').unwrap_or(l)),
        })
        .collect();
    let license_trimmed: String = license
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect();
    assert_eq!(unindented.trim_start(), license_trimmed.trim_start());
    assert!(license.contains("Version 3, 19 November 2007"));
    assert!(license
        .contains("13. Remote Network Interaction; Use with the GNU General Public License."));
    let changelog = Command::new("gzip")
        .arg("-dc")
        .arg(x.join("usr/share/doc/pct-passthrough/changelog.gz"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8(changelog.stdout)
            .unwrap()
            .starts_with(&format!("pct-passthrough ({version}) unstable;")),
        "the changelog's top entry is this version"
    );
    let man = Command::new("gzip")
        .arg("-dc")
        .arg(x.join("usr/share/man/man1/pct-passthrough.1.gz"))
        .output()
        .unwrap();
    let man = String::from_utf8(man.stdout).unwrap();
    assert!(
        man.starts_with(&format!(
            ".TH PCT-PASSTHROUGH 1 \"2023-11-14\" \"pct-passthrough {version}\""
        )),
        "{man}"
    );
    assert!(
        man.contains("\n.SH SYNOPSIS\n.nf\npct-passthrough <vmid> <phase>"),
        "{man}"
    );
    assert!(man.contains("\npct-passthrough plan <vmid>"), "{man}");
    assert!(man.contains("PCT_PASSTHROUGH_ROOT"), "{man}");
    // postinst refreshes the copy install.sh made, and nothing else.
    let ctl = out.path().join("ctl");
    dpkg_deb(&["-e", &deb, ctl.to_str().unwrap()]);
    let root = out.path().join("root");
    let snippet = root.join("var/lib/vz/snippets/pct-passthrough");
    std::fs::create_dir_all(snippet.parent().unwrap()).unwrap();
    std::fs::write(&snippet, "old build").unwrap();
    let manifest = root.join("var/lib/pct-passthrough/install/manifest");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(
        &manifest,
        format!(
            "dir\t{0}/x\nbinary\tcreated\t{1}\n",
            root.display(),
            snippet.display()
        ),
    )
    .unwrap();
    let postinst = || {
        let o = Command::new(ctl.join("postinst"))
            .arg("configure")
            .env("PCT_PASSTHROUGH_ROOT", &root)
            .env("PCT_PASSTHROUGH_BIN", BIN)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(
        postinst(),
        "pct-passthrough: updated the hookscript copy /var/lib/vz/snippets/pct-passthrough\n"
    );
    assert_eq!(
        std::fs::read(&snippet).unwrap(),
        std::fs::read(BIN).unwrap()
    );
    assert_eq!(postinst(), "", "nothing to do the second time");

    let policies = x.join("usr/share/doc/pct-passthrough/examples/policies");
    for entry in std::fs::read_dir(policies).unwrap() {
        let p = entry.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        Policy::parse(&p.display().to_string(), &text).unwrap();
    }
}

/// Runs lintian (Debian's package checker; `scripts/test.sh` installs it) on the
/// package as Debian ships it (xz). It must report no error, no warning and
/// no override that is unused or missing from the README's list of reasons.
#[test]
fn lintian_finds_no_error_and_no_unjustified_warning() {
    let out = tempfile::tempdir().unwrap();
    let deb = build(out.path(), "xz");
    let o = Command::new("lintian")
        .args(["--display-info", "--show-overrides", "--pedantic"])
        .arg(&deb)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run lintian ({e}): apt-get install lintian (scripts/test.sh does)")
        });
    let report = String::from_utf8_lossy(&o.stdout);
    // Exit status 0 with nothing printed would pass trivially: make sure
    // lintian ran its checks by requiring the override lines it reports.
    let bad: Vec<&str> = report
        .lines()
        .filter(|l| {
            l.starts_with("E: ")
                || l.starts_with("W: ")
                || l.contains(" unused-override ")
                || l.contains(" mismatched-override ")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "lintian {deb}:\n{}\n(full report:\n{report}{})",
        bad.join("\n"),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "lintian exit {:?}: {report}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );

    // Every override is one lintian applied (an `O:` line), preceded by a
    // comment with its reason, and listed in the README with that reason.
    let overrides = std::fs::read_to_string(repo().join("packaging/lintian-overrides")).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut commented = false;
    let mut count = 0;
    for line in overrides.lines() {
        if line.starts_with('#') {
            commented = true;
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        count += 1;
        assert!(
            commented,
            "packaging/lintian-overrides: no reason above '{line}'"
        );
        commented = false;
        let tag = line
            .split_whitespace()
            .nth(1)
            .expect("'package: tag [pointer]'");
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("O: ") && l.contains(tag)),
            "override {tag} not applied by lintian:\n{report}"
        );
        assert!(
            readme.contains(&format!("`{tag}`")),
            "README.md does not justify the lintian override {tag}"
        );
    }
    assert!(count > 0, "the override list is read");
}
