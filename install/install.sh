#!/usr/bin/env bash
# Installs pct-passthrough on this Proxmox VE node: copies the static binary
# onto a snippets storage, enables the snippets content type if needed, and
# registers it as the hookscript of the given containers, chaining any
# hookscript they already have. Records every change in a manifest so that
# uninstall.sh reverses exactly that. Idempotent: re-running changes nothing.
set -euo pipefail
PROG=pct-passthrough-install
# shellcheck source=install/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

usage() {
    cat <<EOF
usage: install.sh [--storage ID] [--binary PATH] [--all-nodes] [VMID...]

Copies the pct-passthrough binary to <storage>:snippets/pct-passthrough and
runs 'pct set VMID --hookscript <storage>:snippets/pct-passthrough' for each
VMID. A container that already has another hookscript keeps it: it is
recorded as 'chain = "..."' in /etc/pve/pct-passthrough/VMID.toml and
pct-passthrough runs it with the same arguments.

  --storage ID   a directory-backed storage (default: local). local:snippets
                 is per node: in a cluster, run this on every node, or name a
                 shared storage (nfs, cifs, cephfs) here.
  --binary PATH  the static binary (default: the one next to this script,
                 then /usr/bin/pct-passthrough)
  --all-nodes    also put the binary on every other node of the cluster
                 (from /etc/pve/.members, over the nodes' root SSH, as
                 Proxmox's own tools do); on a shared storage, only say so

Every change is recorded in /var/lib/pct-passthrough/install/manifest;
uninstall.sh reverses it. PCT_PASSTHROUGH_ROOT prefixes every host path.
EOF
}

STORAGE=local
BINARY=
ALL_NODES=0
VMIDS=()
while [ $# -gt 0 ]; do
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    --storage)
        [ $# -ge 2 ] || die "--storage needs a storage ID"
        STORAGE=$2
        shift 2
        ;;
    --binary)
        [ $# -ge 2 ] || die "--binary needs a path"
        BINARY=$2
        shift 2
        ;;
    --all-nodes)
        ALL_NODES=1
        shift
        ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
        valid_vmid "$1" || die "invalid vmid '$1': expected a number from 100 to 999999999 without a leading zero"
        VMIDS+=("$1")
        shift
        ;;
    esac
done

if [ -z "$BINARY" ]; then
    here=$(dirname "$(readlink -f "$0")")
    for c in "$here/$NAME" "$here/../target/x86_64-unknown-linux-gnu/release/$NAME" /usr/bin/$NAME; do
        if [ -x "$c" ]; then
            BINARY=$c
            break
        fi
    done
    [ -n "$BINARY" ] || die "no pct-passthrough binary found; build it (cargo build --release) or pass --binary PATH"
fi
[ -f "$BINARY" ] && [ -x "$BINARY" ] || die "$BINARY: not an executable file"
VERSION=$("$BINARY" --version 2>/dev/null) || die "$BINARY --version failed; is it the pct-passthrough binary for this machine?"
case $VERSION in "pct-passthrough "*) ;; *) die "$BINARY: '--version' says '$VERSION', not pct-passthrough" ;; esac

[ -f "$STORAGE_CFG" ] || die "$STORAGE_CFG not found; is this a Proxmox VE node?"
[ ${#VMIDS[@]} -eq 0 ] || need_pct

# 1. The storage and its snippets directory.
rc=0
info=$(storage_info "$STORAGE") || rc=$?
[ $rc -ne 3 ] || die "storage '$STORAGE' is not defined in $STORAGE_CFG; see 'pvesm status'"
[ $rc -eq 0 ] || die "cannot read $STORAGE_CFG"
IFS=$'\t' read -r s_type s_path s_hascontent s_content s_shared <<<"$info"
if [ "$STORAGE" = local ] && [ -z "$s_path" ]; then s_path=/var/lib/vz; fi
snip=$(snippets_dir_of "$s_type" "$s_path" "$STORAGE") ||
    die "storage '$STORAGE' is of type '$s_type', which cannot hold snippets; use a directory storage (local, nfs, cifs, cephfs)"
VOLUME=$STORAGE:snippets/$NAME

# 2. The snippets content type.
case ",$s_content," in
*,snippets,*) ;;
*)
    backup=$STATE_DIR/storage.cfg.orig
    mkdir -p "$STATE_DIR"
    [ -e "$backup" ] || cp -p "$STORAGE_CFG" "$backup"
    if [ "$s_hascontent" = 1 ]; then
        new_content=${s_content:+$s_content,}snippets
    else
        new_content=snippets
    fi
    # On a Proxmox node, pvesm takes the cluster lock on storage.cfg and
    # validates; elsewhere (tests, PCT_PASSTHROUGH_ROOT) edit the file.
    if { [ -z "$ROOT" ] || [ "${PCT_PASSTHROUGH_USE_PVESM:-}" = 1 ]; } && command -v pvesm >/dev/null 2>&1; then
        pvesm set "$STORAGE" --content "$new_content" ||
            die "'pvesm set $STORAGE --content $new_content' failed; enable snippets on '$STORAGE' (Datacenter > Storage > Edit > Content), then re-run"
    else
        awk -v id="$STORAGE" -v has="$s_hascontent" -v nc="$new_content" '
            /^[A-Za-z0-9_-]+:[ \t]*[^ \t]/ {
                hdr = $0; sub(/[ \t]+$/, "", hdr); i = hdr; sub(/^[^:]*:[ \t]*/, "", i)
                insec = (i == id); print
                if (insec && has == 0) print "\tcontent " nc
                next
            }
            /^[ \t]/ && insec && $1 == "content" {
                ws = $0; sub(/[^ \t].*/, "", ws); print ws "content " nc; next
            }
            /^[ \t]/ && insec { print; next }
            { insec = 0; print }' "$STORAGE_CFG" | replace_with_stdin "$STORAGE_CFG" 0640
    fi
    after=$(sha256sum "$STORAGE_CFG" | cut -d' ' -f1)
    manifest_add "storage	$STORAGE	$backup	$after"
    say "enabled the 'snippets' content type on storage '$STORAGE' in /etc/pve/storage.cfg (backup: /var/lib/pct-passthrough/install/storage.cfg.orig)"
    ;;
esac

# 3. The binary. The directory is made by us only if missing; it stays.
dir=$(r "$snip")
dest=$dir/$NAME
ensure_dir "$dir"
if [ -e "$dest" ] && cmp -s "$BINARY" "$dest"; then
    say "$snip/$NAME is up to date ($VERSION)"
else
    if [ -e "$dest" ] && ! grep -q "^binary	" "$MANIFEST" 2>/dev/null; then
        mkdir -p "$STATE_DIR"
        cp -p "$dest" "$STATE_DIR/$NAME.orig"
        manifest_add "binary	replaced	$dest	$STATE_DIR/$NAME.orig"
        say "kept the file that was at $snip/$NAME as /var/lib/pct-passthrough/install/$NAME.orig"
    fi
    cp "$BINARY" "$dest.tmp.$$"
    chmod 0755 "$dest.tmp.$$"
    mv -f "$dest.tmp.$$" "$dest"
    grep -q "^binary	" "$MANIFEST" 2>/dev/null || manifest_add "binary	created	$dest"
    say "installed $VERSION as $snip/$NAME ($VOLUME)"
fi

# 4. Register the hookscript, chaining what was there.
failed=0
for vmid in "${VMIDS[@]}"; do
    conf=$(r "/etc/pve/lxc/$vmid.conf")
    if [ ! -f "$conf" ]; then
        warn "container $vmid: /etc/pve/lxc/$vmid.conf not found; is it on another node? run install.sh there"
        failed=1
        continue
    fi
    cur=$(conf_hookscript "$vmid")
    if [ "$cur" = "$VOLUME" ]; then
        say "container $vmid: already uses $VOLUME"
        continue
    fi
    policy=$POLICY_DIR/$vmid.toml
    old=-
    if [ -n "$cur" ]; then
        case ${cur##*/} in
        "$NAME")
            say "container $vmid: replacing $cur (another copy of pct-passthrough) with $VOLUME; not chained"
            old=$cur
            ;;
        *)
            old=$cur
            have=$(policy_chain "$policy")
            if [ -n "$have" ] && [ "$have" != "$cur" ]; then
                warn "container $vmid: has hookscript $cur, but /etc/pve/pct-passthrough/$vmid.toml already chains '$have'; fix one of them, then re-run"
                failed=1
                continue
            fi
            if [ -z "$have" ]; then
                line="chain = \"$cur\""
                ensure_dir "$POLICY_DIR"
                if [ -e "$policy" ]; then
                    { printf '%s\n' "$line"; cat "$policy"; } | replace_with_stdin "$policy"
                    manifest_add "policy-line	$vmid	$line"
                else
                    printf '# Written by install.sh: the hookscript container %s had before.\n%s\n' "$vmid" "$line" |
                        replace_with_stdin "$policy" 0640
                    manifest_add "policy-created	$vmid	$(sha256sum "$policy" | cut -d' ' -f1)"
                fi
            fi
            say "container $vmid: keeps its hookscript $cur, chained from /etc/pve/pct-passthrough/$vmid.toml"
            ;;
        esac
    fi
    if pct set "$vmid" --hookscript "$VOLUME"; then
        manifest_add "hookscript	$vmid	$old	$VOLUME"
        say "container $vmid: hookscript set to $VOLUME; it takes effect at the next start"
    else
        warn "container $vmid: 'pct set $vmid --hookscript $VOLUME' failed"
        failed=1
    fi
done

# 5. Clusters: local storage is per node.
shared=$s_shared
case $s_type in nfs | cifs | cephfs | glusterfs) shared=1 ;; esac
self=$(this_node)
others=()
while IFS=$'\t' read -r n online ip; do
    [ -n "$n" ] && [ "$n" != "$self" ] && others+=("$n	$online	$ip")
done < <(cluster_members)
if [ ${#others[@]} -gt 0 ] && [ "$shared" = 1 ]; then
    say "storage '$STORAGE' is shared: every node of the cluster sees $snip/$NAME"
elif [ ${#others[@]} -gt 0 ] && [ "$ALL_NODES" = 0 ]; then
    say "note: this node is in a cluster; $STORAGE:snippets is per node, and a container"
    say "  whose hookscript is missing on a node fails to start there. Install on every node:"
    say "    install.sh --all-nodes   (over the nodes' root SSH), or name a shared storage"
    say "    (install.sh --storage <nfs-or-cephfs-id> VMID...)"
elif [ ${#others[@]} -gt 0 ]; then
    sum=$(sha256sum "$BINARY" | cut -d' ' -f1)
    rel=${snip#/}
    for entry in "${others[@]}"; do
        IFS=$'\t' read -r n online ip <<<"$entry"
        host=${ip:-$n}
        if [ "$online" != 1 ]; then
            warn "node $n is offline: $snip/$NAME not copied there; re-run install.sh --all-nodes when it is up"
            failed=1
            continue
        fi
        if ! have=$(node_ssh "$n" "$host" "cd / && if [ -e '$rel/$NAME' ]; then sha256sum '$rel/$NAME'; fi"); then
            warn "node $n ($host): root SSH failed; is it in the cluster's SSH trust (pvecm updatecerts)?"
            failed=1
            continue
        fi
        if [ "${have%% *}" = "$sum" ]; then
            say "node $n: $snip/$NAME is up to date ($VERSION)"
            continue
        fi
        record=
        if ! grep -q "^remote-binary	$n	" "$MANIFEST" 2>/dev/null; then
            if [ -n "$have" ]; then
                backup=var/lib/pct-passthrough/install/$NAME.orig
                node_ssh "$n" "$host" "cd / && mkdir -p '${backup%/*}' && cp -p '$rel/$NAME' '$backup'" ||
                    { warn "node $n: cannot keep its earlier $snip/$NAME; not replaced"; failed=1; continue; }
                record="remote-binary	$n	$host	/$rel/$NAME	/$backup"
            else
                record="remote-binary	$n	$host	/$rel/$NAME	-"
            fi
        fi
        tmp=$rel/$NAME.tmp.$$
        if node_ssh "$n" "$host" "cd / && mkdir -p '$rel'" &&
            node_scp "$n" "$host" "$BINARY" "/$tmp" &&
            node_ssh "$n" "$host" "cd / && chmod 0755 '$tmp' && mv -f '$tmp' '$rel/$NAME'"; then
            [ -z "$record" ] || manifest_add "$record"
            say "node $n: installed $VERSION as $snip/$NAME"
        else
            warn "node $n ($host): copying $snip/$NAME failed"
            failed=1
        fi
    done
fi

exit $failed
