//! What the admin reads in Proxmox's task log, on real LXC with Proxmox's
//! start sequence: a first start, a second start and a refusal. Each hook
//! line fits the narrow task-log panel (fix lines, commands to copy, may be
//! wider). The logs are printed (`cargo test --test e2e_tasklog --
//! --nocapture`); the README's "What the task log shows" is copied from
//! such a run.

mod e2e;

use e2e::ct::DEFAULT_INIT;
use e2e::*;
use pct_passthrough::model::tasklog::WIDTH;

/// The hook's lines (its own prefix and the indented lines under it).
fn hook_lines(task_log: &str) -> Vec<&str> {
    let mut ours = false;
    let mut out = Vec::new();
    for l in task_log.lines() {
        if l.starts_with("pct-passthrough ") {
            ours = true;
        } else if !l.starts_with("  ") {
            ours = false;
        }
        if ours {
            out.push(l);
        }
    }
    out
}

fn assert_fits(what: &str, task_log: &str) {
    println!("----- {what} -----\n{task_log}");
    let lines = hook_lines(task_log);
    assert!(!lines.is_empty(), "{what}: no hook line in:\n{task_log}");
    for l in lines {
        assert!(
            l.chars().count() <= WIDTH || l.trim_start().starts_with("fix: "),
            "{what}: a line of {} characters:\n{l}",
            l.chars().count()
        );
    }
}

#[test]
fn first_start_second_start_and_a_refusal() {
    let bed = Bed::new();
    let pty = bed.pty_serial();
    let mut ct = bed
        .container(990_198)
        .service_user()
        .conf(&pty.bind_entry())
        .init(&format!(
            "{}{DEFAULT_INIT}",
            drop_implicit("svc", "sleep 1000")
        ))
        .hook(Hook::Binary)
        .create();
    let first = ct.start();
    first.expect_started();
    assert!(
        first.task_log.contains("added root:20:1"),
        "{}",
        first.task_log
    );
    assert_fits("first start", &first.task_log);
    ct.stop();
    let second = ct.start();
    second.expect_started();
    assert!(
        !second.task_log.contains("added root:20:1"),
        "{}",
        second.task_log
    );
    assert_fits("second start", &second.task_log);
    ct.stop();

    // A person's own map that sends container gid 20 elsewhere.
    let mut refused = bed
        .container(990_199)
        .service_user()
        .conf(&pty.bind_entry())
        .conf("lxc.idmap: u 0 100000 65536")
        .conf("lxc.idmap: g 0 100000 1000")
        .conf("lxc.idmap: g 1000 101000 64536")
        .hook(Hook::Binary)
        .create();
    let rep = refused.start();
    assert!(
        rep.task_log
            .contains("hookscript error for 990199 on pre-start"),
        "{}",
        rep.task_log
    );
    assert!(
        rep.task_log.contains("fix: replace them with: "),
        "{}",
        rep.task_log
    );
    assert_fits("refusal", &rep.task_log);
}
