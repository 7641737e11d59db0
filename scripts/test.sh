#!/usr/bin/env bash
# Every test: lints, the static release binary, unit, integration and
# end-to-end tests on real LXC containers. Needs root and the packages that
# .ci/run installs (lxc, uidmap, busybox-static).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo build --release
cargo test --no-fail-fast -- --test-threads=2
