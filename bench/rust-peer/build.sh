#!/usr/bin/env bash
# Build the crates.io `vgi-rpc` 0.32 peer server for kit-bench (`--rust-peer`).
# The crate declares rust-version 1.97; the toolchain here is 1.95, so this
# passes --ignore-rust-version. It is kept out of the workspace (and CI) and
# builds into its own target dir; delete that dir when done to save disk.
# Prints the binary's path on the last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${RUST_PEER_TARGET_DIR:-${TMPDIR:-/tmp}/vgi-rpc-peer-target}"
CARGO_TARGET_DIR="$target" cargo build --release --ignore-rust-version \
  --manifest-path "$here/Cargo.toml" >&2
echo "$target/release/vgi-rpc-peer"
