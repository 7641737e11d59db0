//! The first-boot `lxc.hook.mount`: LXC runs it in the container's mount
//! (and user) namespace after the rootfs is mounted and before init. It
//! chroots a child into `$LXC_ROOTFS_MOUNT` and applies the Group rules
//! there. It always exits 0: a failure here must never stop a start.

use std::path::Path;
use std::time::Duration;

use caps::Capability;

use super::ct_job::ct_job;
use crate::model::firstboot::parse_args;
use crate::model::poststart::{group_line, CtRequest};
use crate::sys::log::Log;
use crate::sys::ns::{run_in_container, Target};

/// Bound of the chrooted child.
pub const BOUND: Duration = Duration::from_secs(10);

pub fn run(args: &[String]) -> u8 {
    let name = std::env::var("LXC_NAME").unwrap_or_default();
    let mut log = Log::new(&name, "mount-hook");
    let a = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            log.warn(
                "mount-hook-args",
                format!("bad arguments ({e}); nothing done"),
            );
            return 0;
        }
    };
    let Some(rootfs) = std::env::var_os("LXC_ROOTFS_MOUNT") else {
        log.warn(
            "mount-hook-env",
            "LXC_ROOTFS_MOUNT is not set; not run by LXC? nothing done",
        );
        return 0;
    };
    let req = CtRequest {
        uid: a.uid,
        names: a.groups.iter().cloned().collect(),
        want_gids: a.groups.iter().map(|(g, _)| *g).collect(),
        ..CtRequest::default()
    };
    let target = Target::Rootfs(Path::new(&rootfs));
    match run_in_container(&target, &[Capability::CAP_CHOWN], BOUND, || ct_job(&req)) {
        Ok(r) => {
            for p in &r.problems {
                log.warn("container-files", p.clone());
            }
            for o in r.outcomes.iter().filter(|o| o.created || o.member_added) {
                log.audit(&crate::model::event::Event::info(
                    "group",
                    format!("before init: {}", group_line(o, r.name.as_deref())),
                ));
            }
        }
        Err(e) => log.warn(
            "mount-hook-failed",
            format!("{e:#}; post-start will try after the start"),
        ),
    }
    0
}
