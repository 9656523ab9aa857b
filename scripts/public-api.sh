#!/usr/bin/env bash
# Shows every public name of the library crates that changed incompatibly since a base
# revision (default: the last release tag, else the commit the CHANGELOG's "Unreleased" section
# started from; pass one as $1), with cargo-semver-checks: removed or renamed items, changed
# signatures, new required trait items, and so on. Additions are not breaking and are not
# listed here, and cargo-semver-checks 0.51 does not yet see every changed parameter or field
# type (it missed `SandboxEntry::fork` taking a `ForkAddress`): CHANGELOG.md is the record, and
# this script checks that nothing was removed without it. Installs cargo-semver-checks when it
# is missing.
#
#   bash scripts/public-api.sh            # since the default base
#   bash scripts/public-api.sh f911c59    # since a given revision
set -euo pipefail
cd "$(dirname "$0")/.."

base="${1:-$(git describe --tags --abbrev=0 2>/dev/null || echo f911c59)}"

if ! cargo semver-checks --version >/dev/null 2>&1; then
    echo "installing cargo-semver-checks (once; a few minutes)" >&2
    cargo install cargo-semver-checks --locked
fi

status=0
for crate in prodbox-core prodbox-http prodbox-grpc prodbox-kafka prodbox-db; do
    echo "== $crate: public API against $base"
    # Exit code 1 means "breaking changes found": they are what this script is for.
    cargo semver-checks check-release -p "$crate" --baseline-rev "$base" --all-features \
        || status=$?
done
if [ "$status" -ne 0 ]; then
    echo "public names changed since $base: each must be in CHANGELOG.md" >&2
fi
