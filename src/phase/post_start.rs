//! post-start: find and pin the container's init, hand control back to
//! Proxmox at once, and detect the runtime user in a detached worker.

use anyhow::Result;

use super::Ctx;

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let _ = ctx;
    Ok(())
}
