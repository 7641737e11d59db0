//! Shared by the benchmark binaries: host-root shapes and statistics.
pub mod shapes;
pub mod stats;
