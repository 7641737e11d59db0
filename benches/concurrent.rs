//! Many first starts at once: `BENCH_CONCURRENT` (default 64) containers on
//! one host, one stick each (`shapes::many`), all pre-starts released
//! together against one root, `BENCH_CONCURRENT_ROUNDS` (default 5) times
//! on fresh copies. Reports the wall time per start (release to reap:
//! waiting for the CPU, the locks and the disk included), the lock waits
//! each run printed (`PCT_PASSTHROUGH_LOCK_TIMING=1`) and the fsyncs of one
//! round, and checks after every round that `/etc/subuid` and `/etc/subgid`
//! are well-formed with every needed range exactly once: if not, or if a
//! start failed, it exits 1 with what is wrong.
//!
//! `cargo bench --bench concurrent`; `BENCH_BIN` (the release binary),
//! `BENCH_OUT` (a directory for `concurrent.md` and `targets-concurrent.md`).

mod support;

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::launch::{at_once, lock_waits, pre_start_argv, Ended};
use support::shapes::{self, ManyCt};
use support::stats::{fmt_bytes, fmt_time, percentile};

/// DESIGN.md Targets: p99 per start.
const TARGET_P99_S: f64 = 0.1;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn fail(msg: String) -> ! {
    eprintln!("concurrent starts: {msg}");
    std::process::exit(1);
}

/// Every start exited 0, configured its own container and the subid files
/// are right; otherwise what is wrong.
fn verify(root: &Path, cts: &[ManyCt], ended: &[Ended]) -> Result<(), String> {
    if let Some(e) = ended.iter().find(|e| e.code != 0) {
        return Err(format!(
            "the pre-start of {} exited {}:\n{}",
            cts[e.index].vmid, e.code, e.stderr
        ));
    }
    for ct in cts {
        let conf = fs::read_to_string(root.join(format!("etc/pve/lxc/{}.conf", ct.vmid)))
            .map_err(|e| format!("{}.conf: {e}", ct.vmid))?;
        let want = format!("g {0} {0} 1", ct.gid);
        if !conf
            .lines()
            .any(|l| l.starts_with("lxc.idmap") && l.contains(&want))
        {
            return Err(format!(
                "{}.conf: no lxc.idmap line maps its stick's group ({want}):\n{conf}\nits pre-start said:\n{}",
                ct.vmid,
                ended
                    .iter()
                    .find(|e| cts[e.index].vmid == ct.vmid)
                    .map_or("", |e| e.stderr.as_str())
            ));
        }
    }
    shapes::check_many_subids(root, cts)
}

fn env_for(root: &Path) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("PATH", b"/sbin:/bin:/usr/sbin:/usr/bin".to_vec()),
        ("LC_ALL", b"C".to_vec()),
        ("PCT_PASSTHROUGH_ROOT", root.as_os_str().as_bytes().to_vec()),
        ("PCT_PASSTHROUGH_LOCK_TIMING", b"1".to_vec()),
    ]
}

fn run_round(bin: &Path, root: &Path, cts: &[ManyCt], strace_dir: Option<&Path>) -> Vec<Ended> {
    let argvs: Vec<Vec<Vec<u8>>> = cts
        .iter()
        .enumerate()
        .map(|(i, ct)| {
            let run = pre_start_argv(bin, ct.vmid);
            match strace_dir {
                None => run,
                Some(dir) => {
                    let mut a: Vec<Vec<u8>> = ["/usr/bin/strace", "-f", "-qq", "-e"]
                        .iter()
                        .map(|s| s.as_bytes().to_vec())
                        .collect();
                    a.push(b"trace=fsync,fdatasync,syncfs".to_vec());
                    a.push(b"-o".to_vec());
                    a.push(dir.join(i.to_string()).as_os_str().as_bytes().to_vec());
                    a.extend(run);
                    a
                }
            }
        })
        .collect();
    let env = env_for(root);
    let env: Vec<(&str, &[u8])> = env.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    at_once(&argvs, &env).unwrap_or_else(|e| fail(format!("cannot start the processes: {e}")))
}

/// fsync, fdatasync and syncfs calls in the strace logs of one round.
fn count_syncs(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let text = fs::read_to_string(e?.path())?;
        n += text
            .lines()
            .filter(|l| {
                let l = l
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .trim_start();
                ["fsync(", "fdatasync(", "syncfs("]
                    .iter()
                    .any(|c| l.starts_with(c))
            })
            .count();
    }
    Ok(n)
}

fn main() -> io::Result<()> {
    let bin = std::env::var_os("BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pct-passthrough")));
    let n = env_usize("BENCH_CONCURRENT", 64);
    let rounds = env_usize("BENCH_CONCURRENT_ROUNDS", 5).max(1);
    let work = tempfile::Builder::new()
        .prefix("pct-passthrough-bench-many.")
        .tempdir()?;
    let template = work.path().join("template");
    let cts = shapes::many(&template, n)?;
    let root = work.path().join("root");

    let mut walls = Vec::new();
    let mut peak_rss: u64 = 0;
    let mut round_walls = Vec::new();
    // Per start: all waits summed; per lock kind: every wait.
    let mut waits_per_start = Vec::new();
    let mut by_lock: Vec<(&str, Vec<f64>)> = vec![
        ("the tool's subid lock (`subid.lock`)", Vec::new()),
        ("shadow's `lckpwdf()` (`.pwd.lock`)", Vec::new()),
        (
            "shadow's link locks (`subuid.lock`, `subgid.lock`)",
            Vec::new(),
        ),
        ("the container's own lock (`<vmid>.lock`)", Vec::new()),
    ];
    eprintln!("bench: {rounds} rounds of {n} pre-starts at once");
    for r in 0..rounds {
        shapes::fresh_copy(&template, &root)?;
        let ended = run_round(&bin, &root, &cts, None);
        if let Err(e) = verify(&root, &cts, &ended) {
            fail(format!("round {}: {e}", r + 1));
        }
        round_walls.push(ended.iter().map(|e| e.wall_s).fold(0.0, f64::max));
        for e in &ended {
            walls.push(e.wall_s);
            peak_rss = peak_rss.max(e.maxrss_bytes);
            let waits = lock_waits(&e.stderr);
            waits_per_start.push(waits.iter().map(|(_, s)| s).sum::<f64>());
            for (name, s) in waits {
                let kind = match name.as_str() {
                    "subid.lock" => 0,
                    ".pwd.lock" => 1,
                    "subuid.lock" | "subgid.lock" => 2,
                    _ => 3,
                };
                by_lock[kind].1.push(s);
            }
        }
    }
    // One more round under strace, untimed: the flushes all the starts make.
    let syncs = {
        let logs = tempfile::tempdir()?;
        shapes::fresh_copy(&template, &root)?;
        let traced = Command::new("strace")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if traced {
            let ended = run_round(&bin, &root, &cts, Some(logs.path()));
            verify(&root, &cts, &ended).unwrap_or_else(|e| fail(format!("the traced round: {e}")));
            Some(count_syncs(logs.path())?)
        } else {
            None
        }
    };

    let fsname = {
        let out = Command::new("df").args(["-PT"]).arg(work.path()).output()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            .unwrap_or_else(|| "unknown".into())
    };
    let p = |xs: &[f64], q: f64| {
        if xs.is_empty() {
            "-".to_string()
        } else {
            fmt_time(percentile(xs, q))
        }
    };
    let p99 = percentile(&walls, 99.0);
    let met = p99 < TARGET_P99_S;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{n} first starts at once (`benches/concurrent.rs`): {n} containers with one stick each \
         (GID 20 for a quarter: one append they race for; a GID of its own for a quarter; GID 44, \
         already in `/etc/subgid`, for a quarter; GID 27 for a quarter; a policy uid of its own \
         for every eighth: a subuid append), all `pre-start`s released at once against one root \
         on {fsname}, {rounds} rounds on fresh copies. Per start: release to reap. Lock waits are \
         what each run printed with `PCT_PASSTHROUGH_LOCK_TIMING=1` (every lock taken, from the \
         first try to holding it). After every round `/etc/subuid` and `/etc/subgid` were \
         checked: well-formed, the old lines kept, no line twice, every needed host ID given to \
         root by exactly one line, and every container's config maps its stick's group.\n"
    );
    t.push_str("| measure | samples | p50 | p99 | max | target | met |\n");
    t.push_str("|---|---:|---:|---:|---:|---|---|\n");
    let _ = writeln!(
        t,
        "| pre-start, {n} at once: wall time per start | {} | {} | {} | {} | p99 < {} | {} |",
        walls.len(),
        p(&walls, 50.0),
        p(&walls, 99.0),
        p(&walls, 100.0),
        fmt_time(TARGET_P99_S),
        if met { "yes" } else { "no" }
    );
    let _ = writeln!(
        t,
        "| all {n} done (release to the last reap) | {} | {} | {} | {} | - | - |",
        round_walls.len(),
        p(&round_walls, 50.0),
        p(&round_walls, 99.0),
        p(&round_walls, 100.0),
    );
    let _ = writeln!(
        t,
        "| waiting for locks, all summed, per start | {} | {} | {} | {} | - | - |",
        waits_per_start.len(),
        p(&waits_per_start, 50.0),
        p(&waits_per_start, 99.0),
        p(&waits_per_start, 100.0),
    );
    for (name, xs) in &by_lock {
        let _ = writeln!(
            t,
            "| waiting for {name}, per time taken | {} | {} | {} | {} | - | - |",
            xs.len(),
            p(xs, 50.0),
            p(xs, 99.0),
            p(xs, 100.0),
        );
    }
    let syncs_text = match syncs {
        Some(s) => format!(
            "{s} fsyncs in one round ({:.1} per start)",
            s as f64 / n as f64
        ),
        None => "fsyncs not counted (no strace)".to_string(),
    };
    let _ = writeln!(
        t,
        "\nsubid files after every round: well-formed, every needed range exactly once: yes \
         ({rounds} rounds). {syncs_text}. Peak RSS of any start: {} (`wait4`'s, an upper \
         bound: it counts the forked launcher's pages too).",
        fmt_bytes(peak_rss as f64)
    );
    print!("{t}");
    if let Some(dir) = std::env::var_os("BENCH_OUT") {
        let dir = Path::new(&dir);
        fs::write(dir.join("concurrent.md"), &t)?;
        let rows = format!(
            "| {n} first starts at once: every subid line kept, each needed range exactly once | \
             checked after each of {rounds} rounds | yes | {syncs_text} |\n\
             | {n} first starts at once: p99 under 100 ms per start (on ext4) | p99 {} (p50 {}, \
             max {}) on {fsname} | {} | lock waits per start: p99 {} |\n",
            fmt_time(p99),
            p(&walls, 50.0),
            p(&walls, 100.0),
            if met { "yes" } else { "**no**" },
            p(&waits_per_start, 99.0),
        );
        fs::write(dir.join("targets-concurrent.md"), rows)?;
    }
    Ok(())
}
