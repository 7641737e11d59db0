//! Shared by the benchmark binaries: host-root shapes and statistics.
pub mod launch;
pub mod shapes;
pub mod stats;
