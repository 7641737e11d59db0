# Shared by install.sh and uninstall.sh (sourced, not run): paths under
# PCT_PASSTHROUGH_ROOT, storage.cfg and container-config readers, the manifest.
# shellcheck shell=bash

ROOT=${PCT_PASSTHROUGH_ROOT:-/}
ROOT=${ROOT%/}
NAME=pct-passthrough

# A host path under the root: r /etc/pve/storage.cfg
r() { printf '%s%s' "$ROOT" "$1"; }

STORAGE_CFG=$(r /etc/pve/storage.cfg)
STATE_DIR=$(r /var/lib/pct-passthrough/install)
MANIFEST=$STATE_DIR/manifest
POLICY_DIR=$(r /etc/pve/pct-passthrough)

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

# valid_vmid ID: Proxmox's pve-vmid format, ^[1-9][0-9]{2,8}$ (no leading zero).
valid_vmid() {
    case $1 in '' | *[!0-9]* | 0*) return 1 ;; esac
    [ "${#1}" -le 9 ] && [ "$((10#$1))" -ge 100 ]
}

# storage_info ID: prints "type<TAB>path<TAB>has-content<TAB>content<TAB>shared"
# for the section of storage ID in storage.cfg; exit 3 if there is none.
# PVE's format: "type: id" headers, then indented "key value" lines.
storage_info() {
    awk -v id="$1" '
        /^[A-Za-z0-9_-]+:[ \t]*[^ \t]/ {
            hdr = $0; sub(/[ \t]+$/, "", hdr)
            t = hdr; sub(/:.*/, "", t)
            i = hdr; sub(/^[^:]*:[ \t]*/, "", i)
            insec = (i == id)
            if (insec) { type = t; found = 1 }
            next
        }
        /^[ \t]/ && insec {
            k = $1; v = $0
            sub(/^[ \t]+[^ \t]+[ \t]*/, "", v); sub(/[ \t]+$/, "", v)
            if (k == "path") path = v
            if (k == "content") { content = v; hascontent = 1 }
            if (k == "shared" && v == "1") shared = 1
            next
        }
        { insec = 0 }
        END {
            if (!found) exit 3
            printf "%s\t%s\t%d\t%s\t%d\n", type, path, hascontent, content, shared
        }' "$STORAGE_CFG"
}

# The directory that holds <storage>:snippets/ files, as a host path (not
# under the root). Only directory-backed storages can hold snippets.
snippets_dir_of() { # type path id
    case $1 in
    dir | btrfs) [ -n "$2" ] || return 1 ;;
    nfs | cifs | cephfs | glusterfs) ;;
    *) return 1 ;;
    esac
    local p=$2
    if [ -z "$p" ]; then p=/mnt/pve/$3; fi
    printf '%s/snippets' "${p%/}"
}

# conf_hookscript VMID: the hookscript volume in the main section, or nothing.
conf_hookscript() {
    local conf
    conf=$(r "/etc/pve/lxc/$1.conf")
    awk '
        /^\[/ { exit }
        /^hookscript:/ { v = $0; sub(/^hookscript:[ \t]*/, "", v); sub(/[ \t\r]+$/, "", v) }
        END { printf "%s", v }' "$conf"
}

# policy_chain FILE: the value of a top-level chain = "..." key, or nothing.
policy_chain() {
    [ -f "$1" ] || return 0
    awk '
        /^[ \t]*\[/ { exit }
        /^[ \t]*chain[ \t]*=/ {
            v = $0; sub(/^[^=]*=[ \t]*"/, "", v); sub(/".*/, "", v); printf "%s", v; exit
        }' "$1"
}

# Atomic replace of FILE with stdin: temp file in the same directory, the old
# mode kept, rename. pmxcfs accepts this (and only modes 0640/0600).
replace_with_stdin() {
    local file=$1 mode=${2:-} tmp
    tmp=$file.tmp.$$
    cat >"$tmp"
    if [ -e "$file" ]; then
        chmod --reference="$file" "$tmp" 2>/dev/null || true
    elif [ -n "$mode" ]; then
        chmod "$mode" "$tmp"
    fi
    mv -f "$tmp" "$file"
}

manifest_has() { [ -f "$MANIFEST" ] && grep -qxF -- "$1" "$MANIFEST"; }
manifest_add() {
    mkdir -p "$STATE_DIR"
    manifest_has "$1" || printf '%s\n' "$1" >>"$MANIFEST"
}

# ensure_dir DIR: mkdir -p, recording each directory it creates so that
# uninstall removes exactly those (when empty).
ensure_dir() {
    local d=$1 missing=()
    while [ ! -d "$d" ]; do
        missing=("$d" "${missing[@]}")
        d=$(dirname "$d")
    done
    local m
    for m in "${missing[@]}"; do
        mkdir "$m"
        manifest_add "dir	$m"
    done
}

need_pct() {
    command -v pct >/dev/null 2>&1 ||
        die "pct not found on PATH; run this on a Proxmox VE node as root"
}

# cluster_members: one "name<TAB>online<TAB>ip" line per node in
# /etc/pve/.members (pmxcfs's member list; empty when not in a cluster).
cluster_members() {
    local members
    members=$(r /etc/pve/.members)
    [ -f "$members" ] || return 0
    sed -nE 's/^[[:space:]]*"([^"]+)":[[:space:]]*\{[[:space:]]*"id":[[:space:]]*[0-9]+,[[:space:]]*"online":[[:space:]]*([01])(,[[:space:]]*"ip":[[:space:]]*"([^"]*)")?.*/\1\t\2\t\4/p' "$members"
}

# this_node: the local node's name, from /etc/pve/.members, else hostname.
this_node() {
    local members n=
    members=$(r /etc/pve/.members)
    [ -f "$members" ] && n=$(sed -nE 's/^[[:space:]]*"nodename":[[:space:]]*"([^"]+)".*/\1/p' "$members" | head -n1)
    [ -n "$n" ] || n=$(hostname -s 2>/dev/null || hostname)
    printf '%s' "$n"
}

# The node's root SSH, as Proxmox's own tools call it (BatchMode, the node
# name as host key alias, no escape character). Remote commands start with
# 'cd /' and use paths relative to /.
node_ssh() { # node ip command
    ssh -e none -o BatchMode=yes -o HostKeyAlias="$1" "root@$2" "$3"
}

node_scp() { # node ip local-file remote-path
    scp -p -o BatchMode=yes -o HostKeyAlias="$1" "$3" "root@[$2]:$4"
}
