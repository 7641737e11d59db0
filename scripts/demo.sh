#!/usr/bin/env bash
# The main job on an embedded sample host: build the static binary and run
# the pre-start hook, as Proxmox would, for container 105 of
# examples/sample-host (a copy in a temp dir), then show what it changed.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== building the static binary (cargo build --release; minutes on a fresh machine)"
cargo build --release
bin="$PWD/target/x86_64-unknown-linux-gnu/release/pct-passthrough"
work=$(mktemp -d /tmp/pct-passthrough-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -a examples/sample-host "$work/before"
# The Zigbee stick's node, as udev makes it: root:dialout 0660.
if mknod "$work/before/dev/ttyUSB0" c 188 0 2>/dev/null; then
    chown 0:20 "$work/before/dev/ttyUSB0"
    chmod 0660 "$work/before/dev/ttyUSB0"
else
    echo "(not root: no device node; the stick shows as missing)"
fi
cp -a "$work/before" "$work/host"
export PCT_PASSTHROUGH_ROOT="$work/host"

echo "== pct-passthrough plan 105   (what the next start would change; writes nothing)"
"$bin" plan 105 || echo "(exit $?)"
echo
echo "== pct-passthrough 105 pre-start   (as Proxmox calls the hookscript)"
"$bin" 105 pre-start || echo "(exit $?)"
echo
echo "== files the hook changed (the diffs are the plan above)"
(cd "$work" && diff -rq --no-dereference -x "*.lock" before host | sed 's/^/  /') || true
echo
echo "== pct-passthrough status 105"
"$bin" status 105 || echo "(exit $?)"
echo
echo "== pct-passthrough 105 pre-start   (second start: nothing left to do)"
cp -a "$work/host" "$work/again"
"$bin" 105 pre-start || echo "(exit $?)"
# (The stick's node is left out: diff cannot compare device nodes.)
if (cd "$work" && diff -r --no-dereference -x ttyUSB0 again host >/dev/null); then
    echo "no file changed"
else
    echo "files changed on the second run"
fi
