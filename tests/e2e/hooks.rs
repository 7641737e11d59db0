//! The LXC hook scripts the generated config points at: stand-ins for
//! PVE's `lxc-pve-prestart-hook` (devN nodes), `lxc-pve-autodev-hook`
//! (binding them in) and `lxc-pve-poststop-hook` (the post-stop hookscript).

/// LXC `pre-start` hook, run by the monitor after `lxc.monitor.unshare`:
/// mounts a private tmpfs on `passthrough/` and creates each devN node there
/// with its mapped owner and mode, from the list the bed wrote for this start.
pub const PRE_START: &str = r#"#!/bin/sh
# e2e bed stand-in for lxc-pve-prestart-hook (devN part).
set -eu
d="/var/lib/lxc/$LXC_NAME"
list="$d/devices.spec"
# PVE's hook dies here on an lxc.idmap line parse_id_maps cannot read.
if [ -s "$d/prestart.error" ]; then
    cat "$d/prestart.error" >&2
    exit 1
fi
[ -s "$list" ] || exit 0
mkdir -p "$d/passthrough"
mount -t tmpfs -o mode=0755,size=64k,nosuid,noexec none "$d/passthrough"
while read -r path type major minor mode uid gid; do
    node="$d/passthrough$path"
    mkdir -p "$(dirname "$node")"
    mknod "$node" "$type" "$major" "$minor"
    chown "$uid:$gid" "$node"
    chmod "$mode" "$node"
done < "$list"
"#;

/// LXC `autodev` hook, run in the container's namespaces before pivot_root:
/// binds each private node onto the same path under the container's /dev.
pub const AUTODEV: &str = r#"#!/bin/sh
# e2e bed stand-in for lxc-pve-autodev-hook.
set -eu
d="/var/lib/lxc/$LXC_NAME"
list="$d/devices.spec"
[ -s "$list" ] || exit 0
while read -r path type major minor mode uid gid; do
    dst="$LXC_ROOTFS_MOUNT$path"
    mkdir -p "$(dirname "$dst")"
    [ -e "$dst" ] || : > "$dst"
    mount --bind "$d/passthrough$path" "$dst"
done < "$list"
"#;

/// LXC `post-stop` hook, run by the monitor with LXC's hook environment.
/// Like PVE's, it skips the hookscript on an in-guest reboot, re-reads the
/// container config, checks the hookscript, and runs `<script> <vmid>
/// post-stop`. The output goes to files the bed reads (PVE: LXC's log).
pub const POST_STOP: &str = r#"#!/bin/sh
# e2e bed stand-in for lxc-pve-poststop-hook.
d="/var/lib/lxc/$LXC_NAME"
out="$d/post-stop"
[ "${LXC_TARGET:-}" = reboot ] && exit 0
conf="/etc/pve/lxc/$LXC_NAME.conf"
vol=$(sed -n -e '/^\[/q' -e 's/^hookscript:[[:space:]]*//p' "$conf" 2>/dev/null | tail -n 1)
[ -n "$vol" ] || exit 0
case "$vol" in
    local:snippets/*) script="/var/lib/vz/snippets/${vol#local:snippets/}" ;;
    *) echo "hookscript error for $LXC_NAME on post-stop: '$vol' is not in the snippets directory" > "$out.stderr"; echo 255 > "$out.rc.tmp"; mv "$out.rc.tmp" "$out.rc"; exit 0 ;;
esac
if [ ! -f "$script" ] || [ ! -x "$script" ]; then
    echo "hookscript error for $LXC_NAME on post-stop: script '$vol' does not exist or is not executable" > "$out.stderr"
    echo 255 > "$out.rc.tmp"; mv "$out.rc.tmp" "$out.rc"; exit 0
fi
LC_ALL=C "$script" "$LXC_NAME" post-stop < /dev/null > "$out.stdout" 2> "$out.stderr"
echo $? > "$out.rc.tmp"
mv "$out.rc.tmp" "$out.rc"
exit 0
"#;
