//! post-start timings on real LXC, for `scripts/bench.sh` (ignored by
//! default; it runs `cargo test --test e2e_bench -- --ignored`):
//! - hand-back: the hook invoked until its stdout and stderr close, which is
//!   when Proxmox stops waiting and releases the config lock;
//! - detection: the service dropping privileges until the state records the
//!   user. The entrypoint stand-in takes the wall-clock time (shared with
//!   the host: no time namespace) just before its `setuid` and writes it
//!   to `/tmp/dropped_at` after.
//!
//! The hook is the release binary when `BENCH_BIN` names it. Writes
//! `post_start.md` into `BENCH_OUT` when set; `BENCH_E2E_ROUNDS` (default 5).

mod e2e;

#[path = "../benches/support/stats.rs"]
mod stats;

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::*;
use stats::{fmt_time, summary};

/// DESIGN.md Targets.
const TARGET_HANDBACK_S: f64 = 0.050;
const TARGET_DETECT_S: f64 = 0.200;

/// A static `su-exec`-like entrypoint: writes the wall-clock time in
/// nanoseconds to `/tmp/dropped_at`, then sets the groups, gid and uid it is
/// given and execs the rest.
fn droptime_binary() -> Vec<u8> {
    static_c("droptime", DROPTIME)
}

const DROPTIME: &str = r#"#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int c, char **v) {
    if (c < 5) return 2;
    gid_t groups[2] = { (gid_t)atoi(v[3]), (gid_t)atoi(v[2]) };
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    if (setgroups(2, groups) || setgid(groups[1]) || setuid((uid_t)atoi(v[1]))) return 3;
    FILE *f = fopen("/tmp/dropped_at.tmp", "w");
    if (!f) return 5;
    fprintf(f, "%lld\n", (long long)t.tv_sec * 1000000000LL + t.tv_nsec);
    fclose(f);
    rename("/tmp/dropped_at.tmp", "/tmp/dropped_at");
    execv(v[4], v + 4);
    return 4;
}
"#;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Polls the state every millisecond until it records container uid 1000;
/// returns the wall-clock time it first did.
fn wait_recorded(state: &Path, within: Duration) -> u128 {
    let start = Instant::now();
    loop {
        if let Ok(t) = fs::read_to_string(state) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
                if v["runtime_user"]["uid"].as_u64() == Some(1000) {
                    return now_ns();
                }
            }
        }
        assert!(
            start.elapsed() < within,
            "{} never recorded uid 1000: {}",
            state.display(),
            fs::read_to_string(state).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
#[ignore = "a benchmark: scripts/bench.sh runs it with --ignored"]
fn post_start_timings() {
    let rounds: u32 = std::env::var("BENCH_E2E_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let release = std::env::var_os("BENCH_BIN").map(PathBuf::from);
    let bed = Bed::new();
    let pty = bed.pty_serial();
    let helper = droptime_binary();
    let (mut handback, mut exited, mut detect) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let vmid = 990_190 + i;
        let mut ct = bed
            .container(vmid)
            .service_user()
            .conf(&format!(
                "lxc.mount.entry: {} dev/ttyUSB0 none bind,optional,create=file",
                pty.by_id.display()
            ))
            .file("/usr/bin/droptime", &helper, 0o755)
            // The drop comes a second after the start, while post-start's
            // worker watches, like an entrypoint that prepares first.
            .init("sleep 1\n/usr/bin/droptime 1000 1000 20 /bin/sleep 1000 &\nwhile :; do sleep 3600; done\n")
            .hook(Hook::Binary)
            .create();
        if let Some(bin) = &release {
            let link = Path::new(e2e::bed::SNIPPETS).join(format!("e2e-{vmid}-pct-passthrough"));
            fs::remove_file(&link).unwrap();
            symlink(bin, &link).unwrap();
        }
        let rep = ct.start();
        rep.expect_started();
        let post = rep.post_start.as_ref().expect("post-start ran");
        assert!(post.success(), "{post}");
        handback.push(
            post.closed_after
                .expect("stdout/stderr closed")
                .as_secs_f64(),
        );
        exited.push(post.exited_after.as_secs_f64());
        let recorded = wait_recorded(&ct.cluster_state_path(), Duration::from_secs(15));
        let drop_file = ct.rootfs().join("tmp/dropped_at");
        assert!(
            wait_until(Duration::from_secs(5), || drop_file.exists()),
            "the entrypoint never dropped privileges"
        );
        let dropped: u128 = fs::read_to_string(&drop_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(recorded >= dropped, "recorded before the drop?");
        detect.push((recorded - dropped) as f64 / 1e9);
        ct.stop();
    }

    let binary = if release.is_some() {
        "release binary"
    } else {
        "debug binary (set BENCH_BIN for the release one)"
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "post-start on real LXC ({rounds} starts of a fresh container, {binary}): hand-back is \
         the hook's spawn until its stdout and stderr close; detection is the entrypoint's \
         `setuid` until the state records the user (polled every 1 ms).\n"
    );
    t.push_str("| measure | runs | median | min | max | target | met |\n|---|---:|---:|---:|---:|---|---|\n");
    for (name, xs, target) in [
        (
            "post-start hand-back (pipes closed)",
            &handback,
            Some(TARGET_HANDBACK_S),
        ),
        ("post-start process exit", &exited, None),
        (
            "runtime user detected and recorded",
            &detect,
            Some(TARGET_DETECT_S),
        ),
    ] {
        let s = summary(xs);
        let (target, met) = match target {
            Some(ts) => (
                format!("< {}", fmt_time(ts)),
                if s.median < ts { "yes" } else { "no" }.to_string(),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            t,
            "| {name} | {} | {} | {} | {} | {target} | {met} |",
            s.n,
            fmt_time(s.median),
            fmt_time(s.min),
            fmt_time(s.max)
        );
    }
    print!("{t}");
    if let Some(dir) = std::env::var_os("BENCH_OUT") {
        let dir = Path::new(&dir);
        fs::write(dir.join("post_start.md"), &t).unwrap();
        let yes = |b: bool| if b { "yes" } else { "**no**" };
        let (h, d) = (summary(&handback).median, summary(&detect).median);
        let rows = format!(
            "| post-start hands control back in under 50 ms | {} | {} | |\n\
             | runtime user detected within 200 ms of the privilege drop | {} | {} | |\n",
            fmt_time(h),
            yes(h < TARGET_HANDBACK_S),
            fmt_time(d),
            yes(d < TARGET_DETECT_S)
        );
        fs::write(dir.join("targets-post-start.md"), rows).unwrap();
    }
}

/// DESIGN.md Targets: a replugged device works again within 1 s of the udev
/// event, plus the service's own retry interval.
const SERVICE_RETRY_S: f64 = 0.100;
const TARGET_REPLUG_S: f64 = 1.0 + SERVICE_RETRY_S;

/// Replug on real LXC: a running container's service writes to its stick
/// every 100 ms, reopening the path each time; each round the stick comes
/// back as a new pty (another minor) behind the same by-id link, with
/// `udev remove` and `udev add` run as udev runs them. Measured: the `udev
/// add` spawn until the first byte arrives on the new stick, and how long
/// the udev entry itself takes (udev waits for it).
#[test]
#[ignore = "a benchmark: scripts/bench.sh runs it with --ignored"]
fn replug_timings() {
    let rounds: u32 = std::env::var("BENCH_E2E_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let bin = std::env::var_os("BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(Bed::hook_binary);
    let bed = Bed::new();
    let mut stick = bed.pty_serial();
    let by_id = stick.by_id.clone();
    let link = by_id.display().to_string();
    let mut ct = bed
        .container(990_127)
        .privileged()
        .service_user()
        .conf(&format!(
            "lxc.mount.entry: {link} dev/ttyUSB0 none bind,optional,create=file"
        ))
        .file(
            "/usr/local/bin/svc",
            "#!/bin/sh\nwhile :; do printf 'w\\n' > /dev/ttyUSB0; sleep 0.1; done\n",
            0o755,
        )
        .init(&format!(
            "{}while :; do sleep 3600; done\n",
            drop_implicit("svc", "/usr/local/bin/svc")
        ))
        .hook(Hook::Binary)
        .create();
    ct.start().expect_started();
    assert!(!stick.read_until(b"w", Duration::from_secs(10)).is_empty());
    let udev = |action: &str, node: &str, mm: (u32, u32)| {
        e2e::run::run(
            Command::new(&bin)
                .args(["udev", action, node])
                .env_clear()
                .env("ACTION", action)
                .env("DEVNAME", node)
                .env("MAJOR", mm.0.to_string())
                .env("MINOR", mm.1.to_string())
                .env("DEVLINKS", &link),
            Duration::from_secs(10),
        )
    };
    let (mut work_again, mut entry) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let next = bed.pty_serial();
        let (old, mm) = (
            stick.slave.display().to_string(),
            (stick.major, stick.minor),
        );
        drop(stick);
        let r = udev("remove", &old, mm);
        assert!(r.success(), "{r}");
        entry.push(r.exited_after.as_secs_f64());
        let name = next
            .slave
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let _ = fs::remove_file(&by_id);
        symlink(format!("../../pts/{name}"), &by_id).unwrap();
        // Let the service fail a few times on the removed node first.
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let r = udev(
            "add",
            &next.slave.display().to_string(),
            (next.major, next.minor),
        );
        assert!(r.success(), "{r}");
        entry.push(r.exited_after.as_secs_f64());
        assert!(
            !next.read_until(b"w", Duration::from_secs(10)).is_empty(),
            "no write after the replug"
        );
        work_again.push(t0.elapsed().as_secs_f64());
        stick = next;
    }
    ct.stop();
    let _ = fs::remove_file(&by_id);

    let mut t = String::new();
    let _ = writeln!(
        t,
        "Replug on real LXC ({rounds} replugs of a stick in a running container, the service \
         writing every 100 ms and reopening the path each time): from the `udev add` spawn to \
         the first byte on the new node, and the udev entry's own run time (remove and add).\n"
    );
    t.push_str("| measure | runs | median | min | max | target | met |\n|---|---:|---:|---:|---:|---|---|\n");
    let s = summary(&work_again);
    let _ = writeln!(
        t,
        "| replug: udev add to the service's next successful write | {} | {} | {} | {} | < {} | {} |",
        s.n,
        fmt_time(s.median),
        fmt_time(s.min),
        fmt_time(s.max),
        fmt_time(TARGET_REPLUG_S),
        if s.max < TARGET_REPLUG_S { "yes" } else { "no" }
    );
    let e = summary(&entry);
    let _ = writeln!(
        t,
        "| udev entry run time (hands the work to a detached worker) | {} | {} | {} | {} | - | - |",
        e.n,
        fmt_time(e.median),
        fmt_time(e.min),
        fmt_time(e.max)
    );
    print!("{t}");
    if let Some(dir) = std::env::var_os("BENCH_OUT") {
        let dir = Path::new(&dir);
        fs::write(dir.join("replug.md"), &t).unwrap();
        let row = format!(
            "| a replugged device works again within 1 s of the udev event (plus the service's 100 ms retry) | {} (slowest of {}) | {} | |\n",
            fmt_time(s.max),
            s.n,
            if s.max < TARGET_REPLUG_S { "yes" } else { "**no**" }
        );
        fs::write(dir.join("targets-replug.md"), row).unwrap();
    }
}
