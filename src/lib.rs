//! pct-passthrough: a Proxmox VE container hookscript that makes host devices
//! and host IDs usable inside unprivileged LXC containers.
//!
//! - [`model`]: pure file formats and decisions (no syscalls);
//! - [`sys`]: every syscall, lock and namespace entry;
//! - [`phase`]: one module per hookscript phase, tying the two together;
//! - [`cli`] and [`app`]: argv to exit code.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod app;
pub mod cli;
pub mod cmd;
pub mod fuzzcheck;
pub mod model;
pub mod paths;
pub mod phase;
pub mod sys;
