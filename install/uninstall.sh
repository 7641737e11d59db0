#!/usr/bin/env bash
# Reverses what install.sh did on this node, from its manifest, newest change
# first: re-registers each container's previous hookscript (or removes ours),
# takes out the chain lines it wrote, removes the binary it put on the
# snippets storage, and restores storage.cfg byte for byte.
set -euo pipefail
PROG=pct-passthrough-uninstall
# shellcheck source=install/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

usage() {
    cat <<EOF
usage: uninstall.sh [--all-nodes] [VMID...]

Without VMIDs: undoes everything install.sh recorded on this node in
/var/lib/pct-passthrough/install/manifest; with --all-nodes also the
copies 'install.sh --all-nodes' put on other nodes (over their root SSH). With VMIDs: only unregisters those
containers (their previous hookscript comes back) and keeps the binary.
Safe to re-run. PCT_PASSTHROUGH_ROOT prefixes every host path.
EOF
}

ONLY=()
ALL_NODES=0
while [ $# -gt 0 ]; do
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    --all-nodes)
        ALL_NODES=1
        shift
        ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
        valid_vmid "$1" || die "invalid vmid '$1': expected a number from 100 to 999999999 without a leading zero"
        ONLY+=("$1")
        shift
        ;;
    esac
done

if [ ! -f "$MANIFEST" ]; then
    say "nothing to undo: /var/lib/pct-passthrough/install/manifest does not exist"
    exit 0
fi

selected() { # vmid
    [ ${#ONLY[@]} -eq 0 ] && return 0
    local v
    for v in "${ONLY[@]}"; do [ "$v" = "$1" ] && return 0; done
    return 1
}

# Drops the first line equal to $2 from file $1, keeping everything else.
drop_line() {
    awk -v l="$2" '!done && $0 == l { done = 1; next } { print }' "$1" | replace_with_stdin "$1"
}

failed=0
kept=()
mapfile -t records < <(tac "$MANIFEST")
for rec in "${records[@]}"; do
    IFS=$'\t' read -r kind a b c <<<"$rec"
    undone=1
    case $kind in
    hookscript)
        vmid=$a old=$b ours=$c
        if ! selected "$vmid"; then
            undone=0
        elif [ ! -f "$(r "/etc/pve/lxc/$vmid.conf")" ]; then
            warn "container $vmid: /etc/pve/lxc/$vmid.conf is gone (migrated or destroyed?); nothing to unregister here"
        elif [ "$(conf_hookscript "$vmid")" != "$ours" ]; then
            say "container $vmid: its hookscript is no longer $ours; left as it is"
        elif [ "$old" = - ]; then
            need_pct
            if pct set "$vmid" --delete hookscript; then
                say "container $vmid: hookscript removed"
            else
                warn "container $vmid: 'pct set $vmid --delete hookscript' failed"
                failed=1 undone=0
            fi
        else
            need_pct
            if pct set "$vmid" --hookscript "$old"; then
                say "container $vmid: hookscript $old restored"
            else
                warn "container $vmid: 'pct set $vmid --hookscript $old' failed"
                failed=1 undone=0
            fi
        fi
        ;;
    policy-line)
        vmid=$a line=$b
        policy=$POLICY_DIR/$vmid.toml
        if ! selected "$vmid"; then
            undone=0
        elif [ -f "$policy" ] && grep -qxF -- "$line" "$policy"; then
            drop_line "$policy" "$line"
            say "container $vmid: removed '$line' from /etc/pve/pct-passthrough/$vmid.toml"
        fi
        ;;
    policy-created)
        vmid=$a sum=$b
        policy=$POLICY_DIR/$vmid.toml
        if ! selected "$vmid"; then
            undone=0
        elif [ ! -f "$policy" ]; then
            :
        elif [ "$(sha256sum "$policy" | cut -d' ' -f1)" = "$sum" ]; then
            rm -f "$policy"
            say "container $vmid: removed /etc/pve/pct-passthrough/$vmid.toml"
        else
            say "container $vmid: /etc/pve/pct-passthrough/$vmid.toml was edited since install; kept, without its chain line"
            chain=$(grep -m1 -E '^[[:space:]]*chain[[:space:]]*=' "$policy" || true)
            [ -z "$chain" ] || drop_line "$policy" "$chain"
        fi
        ;;
    binary)
        how=$a dest=$b backup=$c
        if [ ${#ONLY[@]} -gt 0 ]; then
            undone=0
        elif [ "$how" = replaced ] && [ -f "$backup" ]; then
            mv -f "$backup" "$dest"
            say "restored the earlier ${dest#"$ROOT"}"
        else
            rm -f "$dest"
            say "removed ${dest#"$ROOT"}"
        fi
        ;;
    remote-binary)
        node=$a host=$b
        IFS=$'\t' read -r _ _ _ dest backup <<<"$rec"
        b=${backup#/}
        if [ ${#ONLY[@]} -gt 0 ]; then
            undone=0
        elif [ "$ALL_NODES" = 0 ]; then
            say "node $node: kept $dest (uninstall.sh --all-nodes removes it)"
            undone=0
        elif [ "$backup" != - ] &&
            node_ssh "$node" "$host" "cd / && if [ -f '$b' ]; then mv -f '$b' '${dest#/}'; rmdir '${b%/*}' '${b%/*/*}' 2>/dev/null || true; fi"; then
            say "node $node: restored the earlier $dest"
        elif [ "$backup" = - ] && node_ssh "$node" "$host" "cd / && rm -f '${dest#/}'"; then
            say "node $node: removed $dest"
        else
            warn "node $node ($host): root SSH failed; $dest left there"
            failed=1 undone=0
        fi
        ;;
    dir)
        if [ ${#ONLY[@]} -gt 0 ]; then
            undone=0
        elif [ -d "$a" ] && ! rmdir "$a" 2>/dev/null; then
            say "kept ${a#"$ROOT"}: it is not empty"
        fi
        ;;
    storage)
        id=$a backup=$b sum=$c
        if [ ${#ONLY[@]} -gt 0 ]; then
            undone=0
        elif [ ! -f "$backup" ]; then
            warn "the storage.cfg backup $backup is missing; remove 'snippets' from the content of storage '$id' by hand if you want"
        elif [ "$(sha256sum "$STORAGE_CFG" | cut -d' ' -f1)" = "$sum" ]; then
            replace_with_stdin "$STORAGE_CFG" <"$backup"
            rm -f "$backup"
            say "restored /etc/pve/storage.cfg as it was before install (snippets off for '$id' again)"
        else
            warn "/etc/pve/storage.cfg changed since install; left as it is (snippets stay enabled on '$id'; the original is at ${backup#"$ROOT"})"
            undone=2
        fi
        ;;
    *)
        warn "unknown manifest line '$rec'; kept"
        undone=0
        ;;
    esac
    [ "$undone" = 1 ] || kept+=("$rec")
done

if [ ${#kept[@]} -eq 0 ]; then
    rm -f "$MANIFEST"
    rmdir "$STATE_DIR" "${STATE_DIR%/install}" 2>/dev/null || true
    say "uninstalled"
else
    # Keep what is left, oldest first, so a later run can finish the job.
    printf '%s\n' "${kept[@]}" | tac | replace_with_stdin "$MANIFEST"
fi
exit $failed
