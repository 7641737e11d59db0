//! Hookscript chaining on real LXC through the Proxmox start sequence of the
//! test bed: the chained script sees every phase with PVE's argv and the
//! config lock held, and its pre-start failure aborts a real start.

mod e2e;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use e2e::bed::SNIPPETS;
use e2e::*;

/// Installs `/var/lib/vz/snippets/e2e-<vmid>-chained.sh` (removed with the
/// container), which logs `<argv> lock=<held|free>` and fails `fail_phase`.
fn chained_script(vmid: u32, fail_phase: &str) -> String {
    let name = format!("e2e-{vmid}-chained.sh");
    let path = format!("{SNIPPETS}/{name}");
    let body = format!(
        "#!/bin/sh\nlock=free\nflock -n -E 99 \"/run/lock/lxc/pve-config-$1.lock\" true || {{ [ $? -eq 99 ] && lock=held; }}\necho \"$1 $2 lock=$lock\" >> /var/lib/lxc/$1/chain-calls.log\nif [ \"$2\" = '{fail_phase}' ]; then echo \"chained: backup mount missing for $1\" >&2; exit 4; fi\necho \"chained: $2 ok\"\n"
    );
    fs::write(&path, body).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    format!("local:snippets/{name}")
}

fn calls(vmid: u32) -> Vec<String> {
    fs::read_to_string(format!("/var/lib/lxc/{vmid}/chain-calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn chained_hookscript_runs_in_every_phase_of_a_real_start() {
    let bed = Bed::new();
    let vmid = 990_170;
    let mut ct = bed.container(vmid).hook(Hook::Binary).create();
    let volume = chained_script(vmid, "none");
    fs::write(
        format!("/etc/pve/pct-passthrough/{vmid}.toml"),
        format!("chain = \"{volume}\"\n"),
    )
    .unwrap();
    let rep = ct.start();
    rep.expect_started();
    assert!(rep.task_log.contains("chained: pre-start ok"), "{rep}");
    ct.stop();
    assert_eq!(
        calls(vmid)[..3],
        [
            format!("{vmid} pre-start lock=held"),
            format!("{vmid} post-start lock=held"),
            format!("{vmid} pre-stop lock=held"),
        ]
    );
    // post-stop runs in the LXC monitor; whether PVE's lock is held there
    // depends on who stopped the container, so only the argv is checked.
    assert_eq!(calls(vmid).len(), 4);
    let last = calls(vmid).pop().unwrap_or_default();
    assert!(
        last.starts_with(&format!("{vmid} post-stop lock=")),
        "{last}"
    );
}

#[test]
fn chained_pre_start_failure_aborts_the_start() {
    let bed = Bed::new();
    let vmid = 990_171;
    let mut ct = bed.container(vmid).hook(Hook::Binary).create();
    let volume = chained_script(vmid, "pre-start");
    fs::write(
        format!("/etc/pve/pct-passthrough/{vmid}.toml"),
        format!("chain = \"{volume}\"\n"),
    )
    .unwrap();
    let rep = ct.start();
    assert!(!rep.started, "{rep}");
    let err = rep.error.clone().unwrap_or_default();
    assert!(
        err.starts_with(&format!("hookscript error for {vmid} on pre-start")),
        "{rep}"
    );
    assert!(
        rep.task_log
            .contains(&format!("chained: backup mount missing for {vmid}")),
        "{rep}"
    );
    assert!(
        rep.task_log
            .contains(&format!("chained hookscript {volume} failed (exit code 4)")),
        "{rep}"
    );
    assert!(
        rep.task_log
            .contains("  fix: fix it, or remove 'chain' from "),
        "{rep}"
    );
    assert_eq!(calls(vmid), [format!("{vmid} pre-start lock=held")]);
    assert!(!ct.is_running());
}
