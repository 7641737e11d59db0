//! Growth benchmark: the pure functions at 1×, 10×, 100× and 1000× input
//! size. Reports the time per element at each size and the exponent `k` of
//! `t ∝ n^k` between 100× and 1000×; growth passes when `k` stays within
//! n log n's own exponent (plus a margin for noise).
//!
//! `cargo bench --bench growth`; `BENCH_OUT` names a directory for
//! `growth.md`, `BENCH_QUICK=1` shortens each measurement.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pct_passthrough::model::doctor;
use pct_passthrough::model::group::{self, GroupWant};
use pct_passthrough::model::idmap::{self, IdKind, IdRange, Passthrough};
use pct_passthrough::model::policy::Policy;
use pct_passthrough::model::prestart::{self, Facts, HostFile};
use pct_passthrough::model::pveconf::PveConfig;
use pct_passthrough::model::subid::SubidFile;
use support::shapes;
use support::stats::{exponent, fmt_time, nlogn_exponent};

/// Noise allowance over n log n's exponent: a quadratic step shows as 2.
const MARGIN: f64 = 0.15;
const SCALES: [usize; 4] = [1, 10, 100, 1000];

/// One pure function under test: its input at size `n`, ready to call.
struct Case {
    name: &'static str,
    unit: &'static str,
    base: usize,
    make: fn(usize) -> Box<dyn FnMut()>,
}

fn sample_conf() -> String {
    std::fs::read_to_string(shapes::sample_host().join("etc/pve/lxc/105.conf"))
        .expect("the sample host's config")
}

const CASES: &[Case] = &[
    Case {
        name: "config parse + render (`pveconf`)",
        unit: "line",
        base: 1,
        make: |n| {
            let text = shapes::config_of_lines(&sample_conf(), n);
            Box::new(move || {
                let c = PveConfig::parse(black_box(&text));
                black_box(c.render());
            })
        },
    },
    Case {
        name: "policy parse, `idmap` lines (`policy`)",
        unit: "line",
        base: 1,
        make: |n| {
            let text = shapes::policy_idmap(n);
            Box::new(move || {
                black_box(Policy::parse("p.toml", black_box(&text)).expect("policy"));
            })
        },
    },
    Case {
        name: "ID map, clumps of 10 adjacent IDs (`idmap::compute`)",
        unit: "passthrough",
        base: 1,
        make: |n| {
            let pts: Vec<Passthrough> = (0..n)
                .map(|i| {
                    let (kind, id) = shapes::clumped_id(i);
                    let kind = if kind == "uid" {
                        IdKind::Uid
                    } else {
                        IdKind::Gid
                    };
                    Passthrough::same(kind, id, format!("policy line {}: \"{id}\"", i + 2))
                })
                .collect();
            let base = idmap::pve_default();
            Box::new(move || {
                black_box(idmap::compute(&base, black_box(&pts)).expect("a valid map"));
            })
        },
    },
    Case {
        name: "ID map, one run of adjacent IDs (`idmap::compute`)",
        unit: "passthrough",
        base: 1,
        make: |n| {
            let pts: Vec<Passthrough> = (0..n as u64)
                .map(|i| {
                    let id = 1000 + i;
                    Passthrough::same(IdKind::Gid, id, format!("policy line {}: \"{id}\"", i + 2))
                })
                .collect();
            let base = idmap::pve_default();
            Box::new(move || {
                black_box(idmap::compute(&base, black_box(&pts)).expect("a valid map"));
            })
        },
    },
    Case {
        name: "subid parse + coverage + append (`subid::SubidFile`)",
        unit: "line",
        base: 10,
        make: |n| {
            let text = shapes::large_subid(n);
            let wanted = [IdRange::new(20, 1), IdRange::new(100_000, 65_536)];
            Box::new(move || {
                let f = SubidFile::parse(black_box(&text));
                black_box(f.plan(black_box(&wanted)).expect("root:20:1 is missing"));
            })
        },
    },
    Case {
        name: "doctor's subid checks (`doctor::root_ranges`, `unparsed_subid_lines`)",
        unit: "line",
        base: 10,
        make: |n| {
            let text = shapes::large_subid(n);
            let used = [IdRange::new(100_000, 65_536)];
            Box::new(move || {
                black_box(doctor::root_ranges("/etc/subuid", black_box(&text), &used));
                black_box(doctor::unparsed_subid_lines(black_box(&text)));
            })
        },
    },
    Case {
        name: "container group file: GID 20 and a member (`group::ensure_groups`)",
        unit: "line",
        base: 10,
        make: |n| {
            let text = shapes::group_file(n);
            let wants = [GroupWant {
                gid: 20,
                name: "dialout".to_string(),
            }];
            Box::new(move || {
                black_box(
                    group::ensure_groups(black_box(&text), None, &wants, Some("svc"))
                        .expect("an edit"),
                );
            })
        },
    },
    Case {
        name: "pre-start planner, policy passthroughs (`prestart::decide`)",
        unit: "passthrough",
        base: 1,
        make: |n| {
            let text = shapes::policy_idmap_clumped(n);
            let facts = planner_facts(&text);
            Box::new(move || {
                let d = prestart::decide(black_box(&facts));
                assert!(d.refusal.is_none(), "{:?}", d.refusal);
                black_box(d);
            })
        },
    },
    Case {
        name: "pre-start planner, config lines (`prestart::decide`)",
        unit: "line",
        base: 1,
        make: |n| {
            let mut facts = planner_facts("");
            let conf = shapes::config_of_lines(&sample_conf(), n.max(16));
            facts.conf = PveConfig::parse(&conf);
            Box::new(move || {
                black_box(prestart::decide(black_box(&facts)));
            })
        },
    },
];

/// The typical host's facts (the sample config with its stick, PVE's
/// generated config, root's subid ranges) with a policy of `policy` text.
fn planner_facts(policy: &str) -> Facts {
    let host = shapes::sample_host();
    let read = |p: &str| std::fs::read_to_string(host.join(p)).expect("sample host file");
    let conf = PveConfig::parse(&read("etc/pve/lxc/105.conf"));
    let mut f = Facts::minimal(105, "/etc/pve/lxc/105.conf", conf);
    f.subuid.text = Some(read("etc/subuid"));
    f.subgid.text = Some(read("etc/subgid"));
    f.lxc_config.text = Some(read("var/lib/lxc/105/config"));
    if !policy.is_empty() {
        f.policy = Some(Policy::parse("p.toml", policy).expect("policy"));
        f.policy_file = HostFile::new(
            "/etc/pve/pct-passthrough/105.toml",
            Some(policy.to_string()),
        );
    }
    f
}

/// Counts heap allocations, to report allocations per element: a number
/// that, unlike time, does not depend on the machine's load.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc`/`realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One input size of a case, ready to time.
struct Point {
    n: usize,
    f: Box<dyn FnMut()>,
    /// Calls per batch.
    k: usize,
    /// Heap allocations (and reallocations) in one call.
    allocs: u64,
    /// The fastest batch's time per call.
    best: f64,
}

/// Calls per batch so that one batch of `f` takes about `target`.
fn calibrate(f: &mut dyn FnMut(), target: Duration) -> usize {
    f();
    let mut k = 1usize;
    loop {
        let t0 = Instant::now();
        for _ in 0..k {
            f();
        }
        let el = t0.elapsed();
        if el >= target || k >= 1 << 24 {
            return k;
        }
        k = if el.is_zero() {
            k * 16
        } else {
            let want = target.as_secs_f64() / el.as_secs_f64() * k as f64;
            (want.ceil() as usize).clamp(k + 1, k * 16)
        };
    }
}

/// Time of one call in one batch of `k` calls.
fn batch(f: &mut dyn FnMut(), k: usize) -> f64 {
    let t0 = Instant::now();
    for _ in 0..k {
        f();
    }
    t0.elapsed().as_secs_f64() / k as f64
}

fn main() {
    // One pre-start process only ever grows its heap. Repeated calls here
    // would otherwise shrink and regrow it (brk, page faults) whenever a
    // call's garbage crosses glibc's 128 KiB trim or mmap threshold: a step
    // in the time per element that is the allocator's, not the function's.
    // SAFETY: mallopt only tunes glibc's allocator; no thread exists yet.
    let tuned = unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
    };
    assert!(tuned, "mallopt refused the thresholds");
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let (batch_target, passes) = if quick {
        (Duration::from_millis(2), 5)
    } else {
        (Duration::from_millis(10), 15)
    };
    let mut t = String::new();
    t.push_str(
        "Pure functions at 1×, 10×, 100× and 1000× input size: time per element (the fastest of 15 \
         interleaved batches), and the exponent k of t ∝ n^k from 100× to 1000× against n log n's own \
         (≤ n log n when k ≤ its exponent + 0.15).\n\n",
    );
    t.push_str(
        "| function | n at 1× | 1× | 10× | 100× | 1000× | allocations per element at 1000× | \
         k (100×→1000×) | n log n | ≤ n log n |\n",
    );
    t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    let mut all_ok = true;
    // The steepest growth: (k - its n log n exponent, k, function).
    let mut worst: Option<(f64, f64, &str)> = None;
    for case in CASES {
        eprintln!("growth: {}", case.name);
        // Sizes are measured in interleaved passes, and each size keeps its
        // fastest batch: load on a shared machine only ever adds time.
        let mut points: Vec<Point> = SCALES
            .iter()
            .map(|s| {
                let n = case.base * s;
                let mut f = (case.make)(n);
                let k = calibrate(&mut *f, batch_target);
                let before = ALLOCS.load(Ordering::Relaxed);
                f();
                let allocs = ALLOCS.load(Ordering::Relaxed) - before;
                Point {
                    n,
                    f,
                    k,
                    allocs,
                    best: f64::INFINITY,
                }
            })
            .collect();
        for _ in 0..passes {
            for p in points.iter_mut() {
                p.best = p.best.min(batch(&mut *p.f, p.k));
            }
        }
        let times: Vec<(f64, f64)> = points.iter().map(|p| (p.n as f64, p.best)).collect();
        let last = &points[points.len() - 1];
        let allocs = last.allocs as f64 / last.n as f64;
        let per_elem: Vec<String> = times
            .iter()
            .map(|(n, t)| format!("{}/{}", fmt_time(t / n), case.unit))
            .collect();
        let (n1, t1) = times[2];
        let (n2, t2) = times[3];
        let k = exponent(n1, t1, n2, t2);
        let bound = nlogn_exponent(n1, n2);
        let ok = k <= bound + MARGIN;
        all_ok &= ok;
        if worst.is_none_or(|(excess, _, _)| k - bound > excess) {
            worst = Some((k - bound, k, case.name));
        }
        let _ = writeln!(
            t,
            "| {} | {} {} | {} | {allocs:.1} | {k:.2} | {bound:.2} | {} |",
            case.name,
            case.base,
            case.unit,
            per_elem.join(" | "),
            if ok { "yes" } else { "**no**" },
        );
    }
    let _ = writeln!(
        t,
        "\nGrowth no faster than n log n: {}.",
        if all_ok { "yes" } else { "**no**" }
    );
    print!("{t}");
    if let Some(dir) = std::env::var_os("BENCH_OUT") {
        let dir = std::path::Path::new(&dir);
        std::fs::write(dir.join("growth.md"), &t).expect("write growth.md");
        let (excess, k, name) = worst.expect("at least one case");
        let row = format!(
            "| cost grows no faster than n log n (config lines, subid lines, passthroughs) | \
             steepest: k = {k:.2} for {name}, n log n's own is {:.2} | {} | every function's k in the growth table |\n",
            k - excess,
            if all_ok { "yes" } else { "**no**" }
        );
        std::fs::write(dir.join("targets-growth.md"), row).expect("write targets-growth.md");
    }
}
