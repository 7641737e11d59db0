//! scripts/build-deb.sh: the package builds from the test binary, lists the
//! expected files, carries the right version, a man page made from --help,
//! and example policies that the strict policy parser accepts.

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

#[test]
fn package_builds_with_the_expected_contents() {
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-deb.sh");
    let o = Command::new("bash")
        .arg(script)
        .args(["--binary", BIN, "--compression", "none", "--out"])
        .arg(out.path())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let deb = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.ends_with(&format!("pct-passthrough_{version}_amd64.deb")),
        "{deb}"
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
            "-rw-r--r-- root/root ./usr/share/doc/pct-passthrough/README.md",
            "-rw-r--r-- root/root ./usr/share/doc/pct-passthrough/copyright",
            "-rw-r--r-- root/root ./usr/share/doc/pct-passthrough/examples/policies/media-dir.toml",
            "-rw-r--r-- root/root ./usr/share/doc/pct-passthrough/examples/policies/render-node.toml",
            "-rw-r--r-- root/root ./usr/share/doc/pct-passthrough/examples/policies/zigbee-stick.toml",
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
    assert_eq!(
        std::fs::read(x.join("usr/bin/pct-passthrough")).unwrap(),
        std::fs::read(BIN).unwrap()
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
