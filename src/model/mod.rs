//! The pure model: file formats and decisions, no syscalls.
#![forbid(unsafe_code)]

pub mod diff;
pub mod doctor;
pub mod event;
pub mod policy;
pub mod prestart;
pub mod pveconf;
pub mod state;
pub mod storage;
pub mod text;
