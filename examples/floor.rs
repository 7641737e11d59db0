//! The benchmark floor: a static binary that only exits, built with the same
//! profile and rustflags as pct-passthrough (`cargo build --release --example
//! floor`). `scripts/bench.sh` reports every shape as a ratio to it.

fn main() {}
