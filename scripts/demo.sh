#!/usr/bin/env bash
# Runs the most complete demo there is: three HTTP services and a sandbox fork on loopback,
# a mix of baseline, sandboxed and forged requests, and a report. Exits 0 only if isolation held.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet -p prodbox-examples --bin http-chain -- "$@"
