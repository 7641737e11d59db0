//! The end-to-end test bed: real LXC containers on this host, started the way
//! Proxmox VE starts them, with `pct-passthrough` (or a test script) as the
//! hookscript. Owned by the "bed" engineer; scenarios live in
//! `tests/e2e_*.rs`, each with `mod e2e;` and `use e2e::*;`.
//!
//! # Using it
//! ```ignore
//! let bed = Bed::new();                         // global e2e lock, subid backup
//! let pty = bed.pty_serial();                   // /dev/pts/N root:dialout 0660 + by-id link
//! let mut ct = bed.container(990_101)           // reserved range 990100-990199
//!     .service_user()                           // dialout:20, svc 1000 in it
//!     .conf(&format!("lxc.mount.entry: {} dev/ttyUSB0 none bind,optional,create=file", pty.by_id.display()))
//!     .hook(Hook::Binary)                       // hookscript: local:snippets/...
//!     .create();
//! let rep = ct.start();                         // the whole PVE start sequence
//! rep.expect_started();
//! ct.exec_as("svc", "echo hi > /dev/ttyUSB0");  // lxc-attach + busybox su
//! let stop = ct.stop();                         // pre-stop, lxc-stop --kill, post-stop
//! ```
//! Services: `.init(&drop_implicit("svc", "sleep 1000"))` (like `gosu svc`,
//! groups from `/etc/group`) or `drop_explicit(1000, 1000, ..)` (like
//! `su-exec 1000:1000`, no supplementary groups); `ct.processes()` lists them
//! with host IDs. `ct.reboot_inside()` / `ct.poweroff_inside()` reproduce the
//! in-guest paths that skip hookscript phases.
//!
//! The hook's syslog lines: `bed.syslog_for(vmid)` (the bed listens on
//! `/dev/log`; this machine has no syslog daemon). Worker effects:
//! `wait_until(timeout, || ct.state().is_some())`. By hand:
//! `bed.cli(&["status", "990101", "--json"])`.
//!
//! Dropping a `Ct` destroys it; dropping the `Bed` restores `/etc/subuid`,
//! `/etc/subgid` (and their `-` backups) byte for byte, also on panic. A run
//! killed hard is repaired by the next `Bed::new()`.
//!
//! # The start sequence it reproduces (pve-facts §2, §4)
//! `Ct::start`, all under the flock `/run/lock/lxc/pve-config-<vmid>.lock`
//! (10 s timeout, as `lock_config`):
//! 1. read `/etc/pve/lxc/<vmid>.conf` (main section);
//! 2. `update_lxc_config`: write `/var/lib/lxc/<vmid>/config`: device policy
//!    (user-namespaced, that is unprivileged or with any `lxc.idmap` line:
//!    allow `a`; otherwise deny `a` plus the common allow list), per `devN`
//!    the exact rule `c|b M:m rw`, or `r` plus a deny `w` with `deny-write`
//!    (a missing device or a `devN` PVE cannot parse fails the start here),
//!    then the default map `u/g 0 100000 65536` only when unprivileged and
//!    without `lxc.idmap` lines, then `lxc.environment.runtime`, then the raw
//!    `lxc.*` keys. Booleans (`unprivileged`, `deny-write`) are PVE's
//!    `1|on|yes|true` / `0|off|no|false` in any case; a malformed
//!    `lxc.idmap` is written as it is (PVE only warns here);
//! 3. the hookscript (`check_hookscript`: `local:snippets/<file>`, `-f`,
//!    `-x`), `<script> <vmid> pre-start`, no shell, `PATH` of PVE plus
//!    `LC_ALL=C`, stdin at EOF, stdout and stderr read until both close;
//!    non-zero aborts with `hookscript error for <vmid> on pre-start: ...`;
//! 4. `lxc-start -n <vmid> -d`, then `lxc-wait -s RUNNING`. LXC runs the
//!    bed's pre-start hook (tmpfs on `/var/lib/lxc/<vmid>/passthrough`, one
//!    private node per `devN` with owner and mode mapped through
//!    `parse_id_maps`' map, the `lxc.idmap` lines whatever the flag, from the
//!    config as re-read after the hookscript; an `lxc.idmap` line it cannot
//!    parse fails the start here, as PVE's hook dies) and autodev hook (binds
//!    each node onto the same path in the container's /dev);
//! 5. `<script> <vmid> post-start`; non-zero is a warning only.
//!
//! `Ct::stop`: under the lock, `pre-stop` (warning only), `lxc-stop --kill`;
//! LXC's post-stop hook then runs `<script> <vmid> post-stop` with LXC's hook
//! environment (`LXC_NAME`, `LXC_TARGET=stop`, ...), skipping it on reboot.
//!
//! # Differences from real Proxmox VE
//! - cgroup v1 devices controller here: every `lxc.cgroup2.devices.*` key
//!   (PVE's own and the raw ones) is written as `lxc.cgroup.devices.*`.
//! - No pmxcfs: `/etc/pve` is a plain directory (flock and fsync work, any
//!   mode is accepted, no 1 MiB limit, no quorum, `/etc/pve/lxc` is no link).
//! - Only the parts of `update_lxc_config` listed above; no include of PVE's
//!   common/userns configs, no seccomp profile, no capability drops, no
//!   generated AppArmor profile (`lxc.apparmor.profile = unconfined`), no
//!   network (`lxc.net.0.type = empty`), `lxc.autodev = 1`, no ttys. Raw
//!   `lxc.*` keys are not checked against PVE's whitelist (scenarios write
//!   only valid ones); `[pve:pending]` is not applied (PVE applies it before
//!   the hookscript runs; no scenario has one); `validate_id_maps` warnings
//!   are not emitted (they are only warnings). `devN` rules come in file
//!   order (PVE: Perl hash order, which is random), so tests can compare.
//!   The config is read as UTF-8 text (scenarios write only UTF-8).
//! - The rootfs is a directory of busybox-static, owned by host 100000+id
//!   (0+id when privileged); no storage or volume activation. Bind mount
//!   points (`mpN: /host/dir,mp=...`, `idmap=` included) are inserted as
//!   Proxmox's LXC pre-start hook does (`tests/e2e/mounts.rs`), but by the
//!   bed just before `lxc-start`, in its own mount namespace; storage-backed
//!   mount points are not supported.
//!   `/sbin/init` is a shell loop unless the test sets one.
//! - `lxc-start -d` stands in for `systemctl start pve-container@<vmid>`
//!   (`lxc-start -F` under systemd); LXC's log is at DEBUG in
//!   `/var/lib/lxc/<vmid>/lxc.log`.
//! - The LXC hooks are small shell scripts doing only the devN and
//!   hookscript parts of PVE's (no `lock` check, no config regeneration on
//!   reboot). Post-stop output goes to files, not LXC's log. The devN list
//!   is re-read by the bed just before `lxc-start`; a device that vanished
//!   after pre-start fails the start there, without LXC's post-stop (PVE:
//!   its LXC pre-start hook fails and post-stop runs).
//! - The hookscript's environment is only PVE's `PATH` and `LC_ALL=C`, cwd
//!   `/` (PVE: the daemon's environment plus `LC_ALL=C`, cwd unspecified).
//!   The task log is the hook output plus PVE's error and warning lines,
//!   without timestamps.
//! - The pty stand-in is `c 136:N`, which the privileged allow list already
//!   allows (a real ttyUSB is 188:N); test privileged cgroup rules with a
//!   `char_node` outside the list instead (e.g. 1:11).
//! - Hook phases get a 60 s deadline (PVE waits forever); output still open
//!   after it shows as `closed_after: None`.
//! - Stop is always a hard stop (`--kill`), as `pct stop`; no shutdown.
//! - Only the `local` storage: `local:snippets/<f>` is
//!   `/var/lib/vz/snippets/<f>`; the bed links the binary there. When
//!   `/etc/pve/storage.cfg` is absent the bed writes one with just `local`
//!   (snippets enabled) and removes it afterwards.
//! - syslog is the bed's own listener on `/dev/log` (only while a bed
//!   lives; none when the host has a syslog daemon).
//! - In-guest poweroff is SIGTERM to the bed's init; reboot is `reboot -f`
//!   and LXC (not systemd) restarts the container.
//! - `/etc/subuid` and `/etc/subgid` get `root:100000:65536` as lxc-pve's
//!   postinst would; everything else in them is this host's.
#![allow(dead_code, unused_imports)]

pub mod bed;
pub mod cbin;
pub mod ct;
pub mod devices;
pub mod genconf;
pub mod hooks;
#[path = "../common/joined.rs"]
mod joined;
pub mod mounts;
pub mod run;
pub mod syslog;

pub use bed::{Bed, VMIDS};
pub use cbin::{static_c, DROPTO};
pub use ct::{
    drop_explicit, drop_implicit, Ct, Exec, Hook, HostProc, PostStop, StartReport, StopReport,
};
pub use devices::{CharNode, PtySerial, DIALOUT};
pub use joined::joined;
pub use run::{wait_until, Run};
