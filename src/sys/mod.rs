//! The syscall layer: files, locks, logging, processes and namespaces.
//! Everything that touches the host or a container goes through here.

pub mod devnode;
pub mod fs;
pub mod hook;
pub mod hotplug;
pub mod lock;
pub mod log;
pub mod ns;
pub mod proc;
pub mod shadow;
pub mod shift;
pub mod start;
pub mod worker;
