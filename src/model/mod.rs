//! The pure model: file formats and decisions, no syscalls.
#![forbid(unsafe_code)]

pub mod access;
pub mod device;
pub mod diff;
pub mod doctor;
pub mod escape;
pub mod event;
pub mod firstboot;
pub mod group;
pub mod hotplug;
pub mod idmap;
pub mod idset;
pub mod lxcconf;
pub mod mountmap;
pub mod passwd;
pub mod policy;
pub mod poststart;
pub mod prestart;
pub mod pveconf;
pub mod runtime;
pub mod shift;
pub mod state;
pub mod status;
pub mod storage;
pub mod subid;
pub mod tasklog;
pub mod text;
