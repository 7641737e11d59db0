#!/usr/bin/env bash
# Builds the Debian package with dpkg-deb: the static binary, a man page
# generated from its --help, the README, example policies, install/uninstall
# scripts and the example chained hook, plus what Debian policy asks of a
# package (copyright with the full license text from LICENSE, changelog and
# lintian overrides from packaging/). Deterministic: file dates and the man
# page date come from SOURCE_DATE_EPOCH (default: the last commit).
#
#   scripts/build-deb.sh [--binary PATH] [--out DIR] [--compression xz|gzip|none]
#
# Without --binary it runs `cargo build --release` first. Prints the .deb path.
set -euo pipefail
cd "$(dirname "$0")/.."

BINARY=
OUT=target/debian
COMPRESSION=xz
while [ $# -gt 0 ]; do
    case $1 in
    --binary)
        BINARY=$2
        shift 2
        ;;
    --out)
        OUT=$2
        shift 2
        ;;
    --compression)
        COMPRESSION=$2
        shift 2
        ;;
    -h | --help)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "build-deb.sh: unknown argument '$1' (see --help)" >&2
        exit 2
        ;;
    esac
done
if [ -z "$BINARY" ]; then
    cargo build --release
    BINARY=target/x86_64-unknown-linux-gnu/release/pct-passthrough
fi
[ -x "$BINARY" ] || { echo "build-deb.sh: $BINARY is not an executable file" >&2; exit 1; }

NAME=pct-passthrough
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
got=$("$BINARY" --version)
[ "$got" = "$NAME $VERSION" ] || {
    echo "build-deb.sh: $BINARY says '$got', Cargo.toml says $VERSION; rebuild it" >&2
    exit 1
}
ARCH=amd64
MAINTAINER='pct-passthrough maintainers <maintainers@users.noreply.b-seed-02d3c07e.example>'
top=$(head -1 packaging/changelog)
[ "$top" = "$NAME ($VERSION) unstable; urgency=medium" ] || {
    echo "build-deb.sh: packaging/changelog line 1 is '$top', Cargo.toml says $VERSION; add a changelog entry for $VERSION on top" >&2
    exit 1
}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
d=$stage/$NAME
doc=$d/usr/share/doc/$NAME
share=$d/usr/share/$NAME
install -d "$d/DEBIAN" "$d/usr/bin" "$d/usr/share/man/man1" "$doc/examples/policies" \
    "$share/install" "$share/hooks" "$d/usr/share/lintian/overrides" "$d/usr/lib/udev/rules.d"

install -m 0755 "$BINARY" "$d/usr/bin/$NAME"
# As dh_strip does: no symbols, no compiler version notes (lintian's
# unstripped-binary-or-object and binary-has-unneeded-section). A release
# build is already stripped of symbols; a debug build shrinks from ~35 MB.
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$d/usr/bin/$NAME"
install -m 0644 README.md "$doc/README.md"
install -m 0644 examples/policies/*.toml "$doc/examples/policies/"
install -m 0755 install/install.sh install/uninstall.sh "$share/install/"
install -m 0644 install/common.sh "$share/install/"
install -m 0755 hooks/example-chained-hook.sh "$share/hooks/"
install -m 0644 hooks/README.md "$share/hooks/"
# Replug without restart: udevd picks up new rules by itself (it checks the
# rules directories' timestamps), so postinst needs no reload.
install -m 0644 packaging/udev/99-pct-passthrough.rules "$d/usr/lib/udev/rules.d/"
install -m 0644 packaging/lintian-overrides "$d/usr/share/lintian/overrides/$NAME"
# A native package: the changelog is changelog.gz, compressed without a date.
gzip -9nc packaging/changelog >"$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"
# Debian 12 has no /usr/share/common-licenses/AGPL-3, so the copyright file
# carries the whole text (machine-readable format: each line indented by one
# space, an empty line written as " .").
{
    cat <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: $NAME
Upstream-Contact: $MAINTAINER

Files: *
Copyright: 2026 the pct-passthrough authors
License: AGPL-3.0-or-later

License: AGPL-3.0-or-later
 This program is free software: you can redistribute it and/or modify it
 under the terms of the GNU Affero General Public License as published by the
 Free Software Foundation, either version 3 of the License, or (at your
 option) any later version.
 .
 This program is distributed in the hope that it will be useful, but WITHOUT
 ANY WARRANTY; without even the implied warranty of MERCHANTABILITY or
 FITNESS FOR A PARTICULAR PURPOSE. See the GNU Affero General Public License
 below for more details.
 .
EOF
    sed -e 's/[[:space:]]*$//' -e 's/^$/./' -e 's/^/ /' LICENSE
} >"$doc/copyright"
chmod 0644 "$doc/copyright"

# The man page, from --help: the first line is the name, "usage:" lines the
# synopsis, the rest (phases, environment, exit codes) stays preformatted.
roff_escape() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }
help=$("$BINARY" --help)
summary=$(head -1 <<<"$help" | sed 's/^[^:]*: *//')
{
    printf '.TH PCT-PASSTHROUGH 1 "%s" "%s %s" "User Commands"\n' "$DATE" "$NAME" "$VERSION"
    printf '.SH NAME\n%s \\- %s\n' "$NAME" "$(roff_escape <<<"$summary")"
    printf '.SH SYNOPSIS\n.nf\n'
    awk '/^usage:/ { u = 1; next } u && /^$/ { exit } u { sub(/^ +/, ""); print }' <<<"$help" | roff_escape
    printf '.fi\n.SH DESCRIPTION\n'
    printf 'Proxmox VE runs \\fB%s\\fR as a container hookscript. It makes host devices and host IDs usable inside unprivileged LXC containers: ID maps, /etc/subuid and /etc/subgid, cgroup device rules, and the service user'"'"'s groups inside the container.\n' "$NAME"
    printf '.SH NOTES\n.nf\n'
    awk '/^usage:/ { u = 1; next } u && /^$/ { u = 0; r = 1; next } r { print }' <<<"$help" | roff_escape
    printf '.fi\n.SH FILES\n.nf\n'
    cat <<'EOF'
/etc/pve/lxc/<vmid>.conf              container config
/etc/pve/pct-passthrough/<vmid>.toml  policy (optional)
/etc/subuid, /etc/subgid              subordinate IDs
/var/lib/lxc/<vmid>/config            config Proxmox generated for this start
/var/lib/pct-passthrough/<vmid>.json  state of earlier runs
/usr/share/pct-passthrough/install/   install.sh, uninstall.sh
/usr/share/doc/pct-passthrough/examples/policies/
EOF
    printf '.fi\n.SH SEE ALSO\n\\fBpct\\fR(1), \\fBsubuid\\fR(5), \\fBsubgid\\fR(5), /usr/share/doc/%s/README.md\n' "$NAME"
} | gzip -9n >"$d/usr/share/man/man1/$NAME.1.gz"

size_kib=$(du -sk --exclude=DEBIAN "$d" | cut -f1)
cat >"$d/DEBIAN/control" <<EOF
Package: $NAME
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $size_kib
Recommends: uidmap
Section: admin
Priority: optional
Description: Proxmox VE hookscript for devices and IDs in unprivileged containers
 A static binary that Proxmox VE runs as a container hookscript. It writes the
 lxc.idmap lines, /etc/subuid and /etc/subgid entries, cgroup device rules and
 the in-container group membership that USB serial sticks and GPU render nodes
 need in unprivileged (and OCI-based) containers. A udev rule puts a
 replugged stick back into its running container, even under another name.
 .
 Register it with /usr/share/pct-passthrough/install/install.sh VMID.
EOF
# On upgrade, refresh the copy install.sh put on the snippets storage, so the
# hookscript runs the new version (doctor warns when they differ). Nothing
# else: registering containers stays an explicit install.sh run.
cat >"$d/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    root=${PCT_PASSTHROUGH_ROOT:-}
    root=${root%/}
    bin=${PCT_PASSTHROUGH_BIN:-/usr/bin/pct-passthrough}
    manifest=$root/var/lib/pct-passthrough/install/manifest
    if [ -f "$manifest" ]; then
        awk -F '\t' '$1 == "binary" { print $3 }' "$manifest" | while read -r dest; do
            [ -n "$dest" ] && [ -f "$dest" ] || continue
            cmp -s "$bin" "$dest" && continue
            cp "$bin" "$dest.tmp.$$"
            chmod 0755 "$dest.tmp.$$"
            mv -f "$dest.tmp.$$" "$dest"
            echo "pct-passthrough: updated the hookscript copy ${dest#"$root"}"
        done
    fi
fi
exit 0
EOF
chmod 0755 "$d/DEBIAN/postinst"
(cd "$d" && find usr -type f -print0 | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
find "$d" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$OUT"
deb=$OUT/${NAME}_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group "-Z$COMPRESSION" --build "$d" "$deb" >/dev/null
echo "$deb"
