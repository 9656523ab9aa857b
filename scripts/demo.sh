#!/usr/bin/env bash
# Runs the shop demo: gateway, orders and billing (baseline and the pr-42 fork) as processes on
# loopback, against PostgreSQL and a Kafka-protocol broker (tansu, started when missing). It
# prints which billing version handled each order, rows per schema and audit events per
# sandbox, deletes the sandboxes, and exits 0 only if isolation held.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
fi
if ! command -v tansu >/dev/null 2>&1; then
  echo "installing tansu (a Kafka-protocol broker; about 11 minutes once per machine)..."
  cargo install tansu --version '^0.6' --locked --features dynostore
fi
cargo build --quiet -p prodbox-examples --bins
exec "${CARGO_TARGET_DIR:-target}/debug/shop-demo" "$@"
