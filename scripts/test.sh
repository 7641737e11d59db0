#!/usr/bin/env bash
# Every test: lints, the static release binary, unit, property, integration
# and end-to-end tests on real LXC containers. Run as root on Debian 12; the
# Debian packages the tests need are installed first when any is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# lxc: the end-to-end bed; uidmap: newuidmap/newgidmap; busybox-static: the
# containers' rootfs; strace: the I/O budget tests; lintian and binutils:
# the package test (lintian, strip, readelf).
need=()
for pair in lxc-start:lxc newuidmap:uidmap busybox:busybox-static strace:strace \
    lintian:lintian readelf:binutils; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
    echo "== installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo build --release"
cargo build --release
echo "== cargo test (unit, integration, end to end on real LXC)"
cargo test --no-fail-fast -- --test-threads=2
