#!/usr/bin/env bash
# Runs a federated job on N real fedmesh nodes on this machine and reports on it: checks (and
# installs, when it can) what the build needs, builds `fedmesh` and `testnet` (the dev profile,
# whose dependencies and training crates are optimized) as `cargo test --workspace` builds them,
# then runs `testnet` with every argument given here.
#
#   testnet/run.sh --nodes 8 --rounds 20 --topology central --partition iid
#   testnet/run.sh --help        # every flag, at once (no build)
#
# The report (report.json, report.png) and each node's folder and log go to --out
# (default ./testnet-out). The first build compiles RocksDB's C++: 20 minutes to over an hour on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
  case "$arg" in
    -h|--help) exec cat testnet/help.txt ;;
  esac
done
testnet/prerequisites.sh
target="${CARGO_TARGET_DIR:-target}"
# Exactly the test command's build: a narrower one (`cargo build -p ...`) resolves the build
# tools' features differently, and a fresh machine would then compile RocksDB's C++ twice.
cargo test --workspace --no-run
exec "$target/debug/testnet" --binary "$target/debug/fedmesh" "$@"
