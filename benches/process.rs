//! Whole-process benchmark: wall time and peak RSS of `pct-passthrough 105
//! pre-start` (hookscript mode) against temp host roots, one per shape, and
//! of the floor, a static binary that only exits. Writes a markdown table.
//!
//! `cargo bench --bench process` after `cargo build --release --example
//! floor`; `scripts/bench.sh` does both. Environment: `BENCH_ROUNDS` (default
//! 500), `BENCH_OUT` (a directory for `process.md`), `BENCH_SHAPES` (a comma
//! list of shape ids to run, the floor always runs), `BENCH_BASELINE` (another
//! build of the binary: each shape runs with it too, interleaved, as a
//! `[baseline]` row: before/after on one loaded machine) and
//! `BENCH_BASELINE_FLOOR` (that build's floor).

mod support;

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use support::shapes;
use support::stats::{fmt_bytes, fmt_time, summary};

const MIB: f64 = 1024.0 * 1024.0;
/// DESIGN.md Targets.
const TARGET_NOTHING_X: f64 = 1.25;
const TARGET_TYPICAL_X: f64 = 1.75;
const TARGET_TYPICAL_S: f64 = 3e-3;
const TARGET_BINARY_BYTES: f64 = 3.0 * MIB;
const TARGET_RSS_BYTES: f64 = 8.0 * MIB;

/// A temp dir on tmpfs, if `/dev/shm` is one.
fn tmpfs_dir() -> io::Result<Option<tempfile::TempDir>> {
    use nix::sys::statfs::{statfs, TMPFS_MAGIC};
    let shm = Path::new("/dev/shm");
    if !statfs(shm).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC) {
        return Ok(None);
    }
    tempfile::Builder::new()
        .prefix("pct-passthrough-bench.")
        .tempdir_in(shm)
        .map(Some)
}

/// One run of a process.
struct Sample {
    wall_s: f64,
    maxrss_bytes: f64,
    ok: bool,
}

/// Spawns `bin args` with Proxmox's hookscript environment (no TTY, stdin at
/// EOF, `LC_ALL=C`, PVE's `PATH`) and `PCT_PASSTHROUGH_ROOT=root`; returns
/// the wall time from spawn to reap and the child's peak RSS.
fn run_once(bin: &Path, args: &[&str], root: Option<&Path>) -> io::Result<Sample> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/sbin:/bin:/usr/sbin:/usr/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(r) = root {
        cmd.env("PCT_PASSTHROUGH_ROOT", r);
    }
    let t0 = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unreaped child; `status` and `ru` are valid
    // for writes for the duration of the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall_s = t0.elapsed().as_secs_f64();
    if r != pid {
        return Err(io::Error::last_os_error());
    }
    Ok(Sample {
        wall_s,
        maxrss_bytes: ru.ru_maxrss as f64 * 1024.0,
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    })
}

/// What a shape is and what the table says about it.
struct Shape {
    /// For the targets summary.
    id: &'static str,
    name: &'static str,
    /// Builds the host root; `None` for the floor.
    build: Option<fn(&Path) -> io::Result<()>>,
    /// Run the tool once on the built root before it becomes the template:
    /// the "second start" shapes.
    settle: bool,
    /// Put the root on tmpfs (`/dev/shm`), where fsync costs nothing: the
    /// tool's own cost without the disk's.
    tmpfs: bool,
    /// Run in every `every`-th round.
    every: usize,
    target: Option<Target>,
    /// Files (relative to the root) the run must change for the numbers to
    /// mean what the row says; empty: the run must change nothing.
    must_change: &'static [&'static str],
}

const FLOOR: &str = "floor";

const SHAPES: &[Shape] = &[
    Shape {
        id: FLOOR,
        name: "floor (static binary that only exits)",
        build: None,
        settle: false,
        tmpfs: false,
        every: 1,
        target: None,
        must_change: &[],
    },
    Shape {
        id: "nothing",
        name: "pre-start, nothing to do",
        build: Some(shapes::nothing),
        settle: false,
        tmpfs: false,
        every: 1,
        target: Some(Target::Floor(TARGET_NOTHING_X)),
        must_change: &[],
    },
    Shape {
        id: "nothing-large",
        name: "pre-start, nothing to do, 1,000-line config, 10,000 subid lines",
        build: Some(shapes::nothing_large),
        settle: false,
        tmpfs: false,
        every: 1,
        target: None,
        must_change: &[],
    },
    Shape {
        id: "typical",
        name: "pre-start, typical (stick by-id, GID 20, subgid append)",
        build: Some(shapes::typical),
        settle: false,
        tmpfs: false,
        every: 1,
        target: Some(Target::Under(TARGET_TYPICAL_S)),
        must_change: &["etc/subgid"],
    },
    Shape {
        id: "typical-devn",
        name: "pre-start, typical as `dev0:` (GID 20 on the node, no map)",
        build: Some(shapes::typical_devn),
        settle: false,
        tmpfs: false,
        every: 1,
        target: None,
        must_change: &["etc/pve/lxc/105.conf"],
    },
    Shape {
        id: "typical-tmpfs",
        name: "pre-start, typical, root on tmpfs (no fsync cost)",
        build: Some(shapes::typical),
        settle: false,
        tmpfs: true,
        every: 1,
        target: Some(Target::Floor(TARGET_TYPICAL_X)),
        must_change: &["etc/subgid"],
    },
    Shape {
        id: "again",
        name: "pre-start, typical, second start (nothing changes)",
        build: Some(shapes::typical),
        settle: true,
        tmpfs: false,
        every: 1,
        target: None,
        must_change: &[],
    },
    Shape {
        id: "large",
        name: "pre-start, large (1,000-line config, 10,000 subid lines, 300 passthroughs)",
        build: Some(shapes::large),
        settle: false,
        tmpfs: false,
        every: 4,
        target: None,
        must_change: &["etc/subgid", "etc/subuid"],
    },
    Shape {
        id: "large-tmpfs",
        name: "pre-start, large, root on tmpfs (no fsync cost)",
        build: Some(shapes::large),
        settle: false,
        tmpfs: true,
        every: 4,
        target: None,
        must_change: &["etc/subgid", "etc/subuid"],
    },
];

/// A DESIGN.md target on a shape's median.
#[derive(Clone, Copy)]
enum Target {
    /// Under this many seconds.
    Under(f64),
    /// At most this many times the floor's median.
    Floor(f64),
}

impl Target {
    fn limit_s(self, floor: f64) -> f64 {
        match self {
            Target::Under(s) => s,
            Target::Floor(x) => x * floor,
        }
    }

    fn met(self, median: f64, floor: f64) -> bool {
        match self {
            Target::Under(s) => median < s,
            Target::Floor(x) => median <= x * floor,
        }
    }

    fn show(self) -> String {
        match self {
            Target::Under(s) => format!("< {}", fmt_time(s)),
            Target::Floor(x) => format!("≤ {x:.2}× floor"),
        }
    }
}

struct Prepared<'a> {
    shape: &'a Shape,
    /// The binary this row runs.
    bin: PathBuf,
    /// A `BENCH_BASELINE` row: shown, never judged.
    baseline: bool,
    template: Option<PathBuf>,
    root: Option<PathBuf>,
    written: Vec<PathBuf>,
    problem: Option<String>,
    samples: Vec<Sample>,
    /// fsync, fdatasync and syncfs calls of one run (strace), if measured.
    syncs: Option<usize>,
}

/// Counts the flushes of one run on a fresh copy, untimed, under strace
/// (`None` without strace): what a crash-safe start costs in disk round
/// trips, the number that grows with I/O load.
fn count_syncs(bin: &Path, template: &Path, root: &Path) -> io::Result<Option<usize>> {
    shapes::fresh_copy(template, root)?;
    let log = tempfile::NamedTempFile::new()?;
    let status = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=fsync,fdatasync,syncfs", "-o"])
        .arg(log.path())
        .arg(bin)
        .args([shapes::VMID, "pre-start"])
        .env("PCT_PASSTHROUGH_ROOT", root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {}
        _ => return Ok(None),
    }
    let text = fs::read_to_string(log.path())?;
    Ok(Some(
        text.lines()
            .map(|l| {
                l.trim_start_matches(|c: char| c.is_ascii_digit())
                    .trim_start()
            })
            .filter(|l| {
                ["fsync(", "fdatasync(", "syncfs("]
                    .iter()
                    .any(|c| l.starts_with(c))
            })
            .count(),
    ))
}

/// Runs the tool once on a fresh copy, untimed, to check that the shape
/// does what its row claims; returns the files the run changed.
fn check(
    bin: &Path,
    template: &Path,
    root: &Path,
    must_change: &[&str],
) -> io::Result<(Vec<PathBuf>, Option<String>)> {
    shapes::fresh_copy(template, root)?;
    let before = shapes::files(root)?;
    let out = Command::new(bin)
        .args([shapes::VMID, "pre-start"])
        .env("PCT_PASSTHROUGH_ROOT", root)
        .stdin(Stdio::null())
        .output()?;
    let after = shapes::files(root)?;
    let written = shapes::changed(&before, &after);
    let problem = if !out.status.success() {
        Some(format!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    } else if must_change.is_empty() && !written.is_empty() {
        Some(format!(
            "wrote {} file(s) with nothing to change",
            written.len()
        ))
    } else {
        let missing: Vec<&str> = must_change
            .iter()
            .copied()
            .filter(|m| !written.iter().any(|w| w == Path::new(m)))
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "did not change {} (the feature is not there yet?)",
                missing.join(", ")
            )
        })
    };
    Ok((written, problem))
}

/// Builds the shape's template and root under `base` (once per binary: a
/// second-start template is made by that binary) and checks its first run.
fn prepare<'a>(
    shape: &'a Shape,
    bin: &Path,
    baseline: bool,
    base: Option<&Path>,
    tag: &str,
) -> io::Result<Prepared<'a>> {
    let mut p = Prepared {
        shape,
        bin: bin.to_path_buf(),
        baseline,
        template: None,
        root: None,
        written: Vec::new(),
        problem: None,
        samples: Vec::new(),
        syncs: None,
    };
    let Some(build) = shape.build else {
        return Ok(p);
    };
    let Some(base) = base else {
        p.problem = Some("no tmpfs at /dev/shm".into());
        return Ok(p);
    };
    let template = base.join(format!("{tag}.template"));
    let root = base.join(format!("{tag}.root"));
    build(&template)?;
    if shape.settle {
        // The first start; what it leaves is the template.
        let out = Command::new(bin)
            .args([shapes::VMID, "pre-start"])
            .env("PCT_PASSTHROUGH_ROOT", &template)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            p.problem = Some(format!(
                "first start failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let (written, problem) = check(bin, &template, &root, shape.must_change)?;
    p.syncs = count_syncs(bin, &template, &root)?;
    p.written = written;
    p.problem = p.problem.or(problem);
    p.template = Some(template);
    p.root = Some(root);
    Ok(p)
}

fn main() -> io::Result<()> {
    let bin = std::env::var_os("BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pct-passthrough")));
    let floor = std::env::var_os("BENCH_FLOOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin.with_file_name("examples").join("floor"));
    let baseline = std::env::var_os("BENCH_BASELINE").map(PathBuf::from);
    let baseline_floor = std::env::var_os("BENCH_BASELINE_FLOOR").map(PathBuf::from);
    for b in [Some(&floor), baseline.as_ref(), baseline_floor.as_ref()]
        .into_iter()
        .flatten()
    {
        if !b.exists() {
            eprintln!(
                "{}: not found; build it first: cargo build --release --example floor",
                b.display()
            );
            std::process::exit(2);
        }
    }
    let only: Option<Vec<String>> = std::env::var("BENCH_SHAPES")
        .ok()
        .map(|s| s.split(',').map(|id| id.trim().to_string()).collect());
    if let Some(ids) = &only {
        if let Some(bad) = ids.iter().find(|id| !SHAPES.iter().any(|s| s.id == *id)) {
            let known: Vec<&str> = SHAPES.iter().map(|s| s.id).collect();
            eprintln!("BENCH_SHAPES: no shape '{bad}'; known: {}", known.join(","));
            std::process::exit(2);
        }
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let work = tempfile::Builder::new()
        .prefix("pct-passthrough-bench.")
        .tempdir()?;
    let shm = tmpfs_dir()?;

    let mut prepared = Vec::new();
    for (i, shape) in SHAPES.iter().enumerate() {
        let wanted = shape.id == FLOOR
            || only
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|id| id == shape.id));
        if !wanted {
            continue;
        }
        let base = match (&shm, shape.tmpfs) {
            (_, false) => Some(work.path()),
            (Some(shm), true) => Some(shm.path()),
            (None, true) => None,
        };
        let (bin_a, floor_a) = (&bin, &floor);
        let mine = if shape.id == FLOOR { floor_a } else { bin_a };
        prepared.push(prepare(shape, mine, false, base, &i.to_string())?);
        let theirs = match (shape.id == FLOOR, &baseline, &baseline_floor) {
            (true, _, Some(f)) => Some(f),
            (false, Some(b), _) => Some(b),
            _ => None,
        };
        if let Some(theirs) = theirs {
            prepared.push(prepare(shape, theirs, true, base, &format!("{i}.b"))?);
        }
    }

    eprintln!("bench: {rounds} rounds over {} rows", prepared.len());
    for r in 0..rounds {
        for p in prepared.iter_mut() {
            if r % p.shape.every != 0 || (p.shape.build.is_some() && p.template.is_none()) {
                continue;
            }
            let s = match (&p.template, &p.root) {
                (Some(t), Some(root)) => {
                    // A run that writes nothing leaves its root as it was.
                    if !p.written.is_empty() {
                        shapes::fresh_copy(t, root)?;
                    }
                    run_once(&p.bin, &[shapes::VMID, "pre-start"], Some(root))?
                }
                _ => run_once(&p.bin, &[], None)?,
            };
            p.samples.push(s);
        }
    }

    // Shapes run without a reset must really have written nothing.
    for p in prepared.iter_mut() {
        if let (Some(t), Some(root), true) = (&p.template, &p.root, p.written.is_empty()) {
            let drift = shapes::changed(&shapes::files(t)?, &shapes::files(root)?);
            if !drift.is_empty() && p.problem.is_none() {
                p.problem = Some(format!("timed runs changed {}", drift[0].display()));
            }
        }
    }
    let table = render(&prepared, &bin, rounds)?;
    print!("{table}");
    if let Some(dir) = std::env::var_os("BENCH_OUT") {
        fs::write(Path::new(&dir).join("process.md"), &table)?;
    }
    Ok(())
}

/// The median wall time of shape `id` (this build's row), or why there is
/// none.
fn median_of(prepared: &[Prepared], id: &str) -> Result<f64, String> {
    let p = prepared
        .iter()
        .find(|p| p.shape.id == id && !p.baseline)
        .ok_or_else(|| format!("not measured: shape {id} not run (BENCH_SHAPES)"))?;
    if let Some(problem) = &p.problem {
        return Err(format!("not measured: {problem}"));
    }
    if p.samples.iter().any(|s| !s.ok) {
        return Err("some runs failed".into());
    }
    Ok(summary(&p.samples.iter().map(|s| s.wall_s).collect::<Vec<_>>()).median)
}

/// Rows of the README's targets summary: `| target | measured | met | note |`.
fn target_rows(prepared: &[Prepared], floor: f64, size: f64, peak_rss: f64) -> String {
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    let mut t = String::new();
    let nothing =
        format!("pre-start with nothing to do: median at most {TARGET_NOTHING_X:.2}× the floor");
    match median_of(prepared, "nothing") {
        Ok(m) => {
            let _ = writeln!(
                t,
                "| {nothing} | {} = {:.2}× the floor ({}) | {} | side by side in one run |",
                fmt_time(m),
                m / floor,
                fmt_time(floor),
                yes(m <= TARGET_NOTHING_X * floor)
            );
        }
        Err(e) => {
            let _ = writeln!(t, "| {nothing} | - | **no** | {e} |");
        }
    }
    let tmpfs = format!(
        "typical first start (one device, GID 20, subgid append), root on tmpfs: median at \
         most {TARGET_TYPICAL_X:.2}× the floor"
    );
    match median_of(prepared, "typical-tmpfs") {
        Ok(m) => {
            let _ = writeln!(
                t,
                "| {tmpfs} | {} = {:.2}× the floor | {} | the tool's own cost, fsync free |",
                fmt_time(m),
                m / floor,
                yes(m <= TARGET_TYPICAL_X * floor)
            );
        }
        Err(e) => {
            let _ = writeln!(t, "| {tmpfs} | - | **no** | {e} |");
        }
    }
    let disk = "typical first start, root on the temp roots' disk: median under 3 ms";
    let syncs = prepared
        .iter()
        .find(|p| p.shape.id == "typical" && !p.baseline)
        .and_then(|p| p.syncs)
        .map_or(String::new(), |n| {
            format!("{n} fsync{}; ", if n == 1 { "" } else { "s" })
        });
    match median_of(prepared, "typical") {
        Ok(m) => {
            let note = match median_of(prepared, "typical-tmpfs") {
                Ok(own) => format!(
                    "{syncs}{} of it is the tool's own (tmpfs), the rest the disk's flushes",
                    fmt_time(own)
                ),
                Err(e) => format!("{syncs}{e}"),
            };
            let _ = writeln!(
                t,
                "| {disk} | {} | {} | {note} |",
                fmt_time(m),
                yes(m < TARGET_TYPICAL_S)
            );
        }
        Err(e) => {
            let _ = writeln!(t, "| {disk} | - | **no** | {e} |");
        }
    }
    let _ = writeln!(
        t,
        "| static binary under 3 MiB | {} | {} | |\n\
         | peak RSS under 8 MiB | {} (worst pre-start run, large shape included) | {} | |",
        fmt_bytes(size),
        yes(size < TARGET_BINARY_BYTES),
        fmt_bytes(peak_rss),
        yes(peak_rss < TARGET_RSS_BYTES)
    );
    t
}

fn render(prepared: &[Prepared], bin: &Path, rounds: usize) -> io::Result<String> {
    let floor_of = |baseline: bool| {
        prepared
            .iter()
            .find(|p| p.shape.id == FLOOR && p.baseline == baseline)
            .map(|p| summary(&p.samples.iter().map(|s| s.wall_s).collect::<Vec<_>>()).median)
    };
    let floor = floor_of(false).expect("the floor always runs");
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Whole process, `pct-passthrough 105 pre-start` against a temp root, spawn to reap \
         ({rounds} rounds, shapes interleaved; a run that writes gets a fresh copy of its root, \
         copied and flushed untimed). Peak RSS is `wait4`'s: the kernel counts the spawning \
         process's own peak too, so it is never below the floor row's, and a row at the \
         floor's value used no more than that. `fsyncs` counts the fsync, fdatasync and \
         syncfs calls of one run of the shape, under strace.\n"
    );
    t.push_str("| shape | runs | median | min | max | × floor | peak RSS | files written | fsyncs | target | met |\n");
    t.push_str("|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|\n");
    let mut peak_rss: f64 = 0.0;
    for p in prepared {
        let name = if p.baseline {
            format!("{} [baseline]", p.shape.name)
        } else {
            p.shape.name.to_string()
        };
        if p.samples.is_empty() {
            let why = p.problem.as_deref().unwrap_or("no runs");
            let _ = writeln!(
                t,
                "| {name} | 0 | - | - | - | - | - | - | - | - | not measured: {why} |"
            );
            continue;
        }
        // A baseline row is compared with its own floor when there is one.
        let floor = if p.baseline {
            floor_of(true).unwrap_or(floor)
        } else {
            floor
        };
        let wall = summary(&p.samples.iter().map(|s| s.wall_s).collect::<Vec<_>>());
        let rss = p.samples.iter().map(|s| s.maxrss_bytes).fold(0.0, f64::max);
        let failed = p.samples.iter().filter(|s| !s.ok).count();
        if p.template.is_some() && !p.baseline {
            peak_rss = peak_rss.max(rss);
        }
        let written = if p.template.is_none() {
            "-".to_string()
        } else if p.written.is_empty() {
            "none".to_string()
        } else {
            p.written
                .iter()
                .map(|w| format!("`{}`", w.display()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let syncs = p.syncs.map_or("-".to_string(), |n| n.to_string());
        let (target, met) = match p.shape.target.filter(|_| !p.baseline) {
            None => ("-".to_string(), "-".to_string()),
            Some(ts) => {
                let met = if let Some(problem) = &p.problem {
                    format!("not measured: {problem}")
                } else if failed > 0 {
                    format!("no: {failed} run(s) failed")
                } else if ts.met(wall.median, floor) {
                    "yes".to_string()
                } else {
                    "no".to_string()
                };
                let shown = match ts {
                    Target::Under(_) => ts.show(),
                    Target::Floor(_) => {
                        format!("{} = {}", ts.show(), fmt_time(ts.limit_s(floor)))
                    }
                };
                (shown, met)
            }
        };
        let note = match (&p.problem, p.shape.target) {
            (Some(problem), None) => format!(" ({problem})"),
            _ if failed > 0 && p.shape.target.is_none() => format!(" ({failed} failed)"),
            _ => String::new(),
        };
        let _ = writeln!(
            t,
            "| {name}{note} | {} | {} | {} | {} | {:.2} | {} | {written} | {syncs} | {target} | {met} |",
            wall.n,
            fmt_time(wall.median),
            fmt_time(wall.min),
            fmt_time(wall.max),
            wall.median / floor,
            fmt_bytes(rss),
        );
    }
    let size = fs::metadata(bin)?.len() as f64;
    if let Some(dir) = std::env::var_os("BENCH_OUT") {
        fs::write(
            Path::new(&dir).join("targets-process.md"),
            target_rows(prepared, floor, size, peak_rss),
        )?;
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(
        t,
        "\n| resource | measured | target | met |\n|---|---:|---|---|\n\
         | static binary size (`{}`) | {} | < 3 MiB | {} |\n\
         | peak RSS, worst pre-start run above | {} | < 8 MiB | {} |",
        bin.file_name().unwrap_or_default().to_string_lossy(),
        fmt_bytes(size),
        yes(size < TARGET_BINARY_BYTES),
        fmt_bytes(peak_rss),
        yes(peak_rss < TARGET_RSS_BYTES),
    );
    Ok(t)
}
