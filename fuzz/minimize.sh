#!/usr/bin/env bash
# Shrinks fuzz/corpus/TARGET to what the repository keeps: libFuzzer merges
# the corpus and any extra directories (new inputs of a run) on edge coverage
# only, and an input stays when it adds at least MIN_NEW_EDGES edges in that
# pass. Named inputs of the corpus (not a 40-hex name: a found failure, an
# issue item) always stay. README "Fuzzing".
# usage: fuzz/minimize.sh TARGET MIN_NEW_EDGES [DIR...]
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 TARGET MIN_NEW_EDGES [DIR...]" >&2; exit 2; }
cd "$(dirname "$0")"
target=$1 min=$2
shift 2
cargo +nightly fuzz build -s none "$target"
bin=target/x86_64-unknown-linux-gnu/release/$target
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/out" "$tmp/in" "$tmp/keep"
for dir in "corpus/$target" "$@"; do
    find "$dir" -maxdepth 1 -type f -exec cp -t "$tmp/in/" {} +
done
"$bin" -merge=1 -use_counters=0 -merge_control_file="$tmp/ctl" "$tmp/out" "$tmp/in" \
    >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
# Control file: file count, count in the first directory, the paths, then
# one `COV <index> <edge>...` line per input listing the edges it added.
awk -v min="$min" '
    NR == 1 { n = $1; next }
    NR == 2 { next }
    NR <= n + 2 { path[NR - 3] = $0; next }
    $1 == "COV" && NF - 2 >= min { print path[$2] }
' "$tmp/ctl" | while read -r f; do cp "$f" "$tmp/keep/"; done
for f in "corpus/$target"/*; do
    [[ $(basename "$f") =~ ^[0-9a-f]{40}$ ]] || cp "$f" "$tmp/keep/"
done
rm -f "corpus/$target"/*
cp "$tmp/keep"/* "corpus/$target/"
echo "$target: $(ls "corpus/$target" | wc -l) inputs"
