#!/usr/bin/env bash
# Runs every test of the workspace: format check, clippy with -D warnings, each library
# feature alone (cargo hack), the publishable crates packaged and built, then
# `cargo test --workspace` (unit, integration and doc tests). It first installs or starts
# whatever the tests need that is missing; each step says what it does.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

ensure_rust_components() {
    # rustfmt and clippy ship with the toolchain here; add them if a minimal profile lacks them.
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            step "installing $component"
            rustup component add "$component"
        fi
    done
}

ensure_postgres() {
    # The database crates' tests talk to the machine's PostgreSQL on 127.0.0.1:5432.
    command -v pg_isready >/dev/null 2>&1 || return 0
    if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
        step "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
        for _ in $(seq 1 30); do
            pg_isready -h 127.0.0.1 -p 5432 -q && return 0
            sleep 1
        done
        echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
        return 1
    fi
}

ensure_tansu() {
    # The Kafka crate's tests talk to tansu, a Kafka-protocol broker, on 127.0.0.1:9092.
    # Installing it compiles it (about 11 minutes on 2 cores), once per machine.
    if ! tansu --version 2>/dev/null | grep -q ' 0\.6'; then
        step "installing tansu 0.6 (a Kafka-protocol broker)"
        cargo install tansu --version '^0.6' --locked --features dynostore
    fi
    if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
        step "starting tansu on 127.0.0.1:9092"
        nohup tansu broker \
            --listener-url tcp://127.0.0.1:9092 \
            --advertised-listener-url tcp://127.0.0.1:9092 \
            --storage-engine memory://tansu/ > "${TMPDIR:-/tmp}/prodbox-tansu.log" 2>&1 &
        for _ in $(seq 1 50); do
            (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && return 0
            sleep 0.2
        done
        echo "tansu did not come up on 127.0.0.1:9092; see ${TMPDIR:-/tmp}/prodbox-tansu.log" >&2
        return 1
    fi
}

ensure_redis() {
    # prodbox-redis's tests talk to the machine's Redis 7 on 127.0.0.1:6379 (they make and
    # delete ACL users `prodbox-sbx-*` and keys `sbx:{...}:*` only).
    if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
        return 0
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        step "installing Redis (Debian's redis-server)"
        apt-get install -y -q redis-server >/dev/null
    fi
    step "starting Redis on 127.0.0.1:6379 (nothing kept on disk)"
    redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes \
        --logfile "${TMPDIR:-/tmp}/prodbox-redis.log"
    for _ in $(seq 1 30); do
        redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && return 0
        sleep 1
    done
    echo "Redis did not come up on 127.0.0.1:6379; see ${TMPDIR:-/tmp}/prodbox-redis.log" >&2
    return 1
}

ensure_pgbouncer() {
    # `prodbox doctor`'s tests (cli/tests/doctor.rs) start PgBouncers of their own, in both
    # pooling modes, in front of the machine's PostgreSQL.
    if [[ -x /usr/sbin/pgbouncer || -x /usr/bin/pgbouncer ]]; then
        return 0
    fi
    step "installing PgBouncer (Debian's pgbouncer)"
    apt-get install -y -q --no-install-recommends pgbouncer >/dev/null
}

ensure_cargo_hack() {
    # Every feature of the library crates is checked on its own (`cargo hack --each-feature`).
    if command -v cargo-hack >/dev/null 2>&1; then
        return 0
    fi
    step "installing cargo-hack"
    cargo install cargo-hack --locked --quiet
}

ensure_interop_python() {
    # sdk-http's interop tests run a Python service instrumented with the OpenTelemetry Python
    # SDK (sdk-http/tests/interop). It gets a virtual environment of its own with the pinned
    # packages, made again whenever the pins change; the tests find it through PRODBOX_PYTHON.
    if [[ -n "${PRODBOX_PYTHON:-}" ]]; then
        return 0
    fi
    local venv=.venv-interop requirements=sdk-http/tests/interop/requirements.txt
    if ! cmp -s "$requirements" "$venv/requirements.txt"; then
        step "installing the OpenTelemetry Python SDK into $venv ($requirements)"
        rm -rf "$venv"
        if ! python3 -m venv "$venv"; then
            echo "python3 -m venv $venv failed: the interop tests need Python 3 with venv and pip" >&2
            return 1
        fi
        if ! "$venv/bin/python" -m pip install --disable-pip-version-check --quiet \
            --requirement "$requirements"; then
            echo "pip could not install $requirements into $venv (is PyPI reachable?)" >&2
            return 1
        fi
        cp "$requirements" "$venv/requirements.txt"
    fi
    export PRODBOX_PYTHON="$PWD/$venv/bin/python"
}

check_lint_config() {
    # docs/clippy.toml is the configuration services copy to find the calls that start work
    # without the sandbox context; each such call in the fixture must draw its warning.
    local fixture=scripts/lint-fixture output missing=0
    output="$(CLIPPY_CONF_DIR="$PWD/docs" CARGO_TARGET_DIR="$PWD/target/lint-fixture" \
        cargo clippy --quiet --locked --manifest-path "$fixture/Cargo.toml" --message-format short 2>&1)"
    while IFS=: read -r line _; do
        if ! grep -q "src/main.rs:$line:[0-9]*: warning: use of a disallowed method" <<<"$output"; then
            echo "docs/clippy.toml does not flag $fixture/src/main.rs:$line" >&2
            missing=1
        fi
    done < <(grep -n '// flagged$' "$fixture/src/main.rs")
    if [[ $missing -ne 0 ]]; then
        printf '%s\n' "$output" >&2
        return 1
    fi
    echo "$(grep -c '// flagged$' "$fixture/src/main.rs") calls flagged"
}

adopted_example() {
    # The example service of examples/adopted, as a team adopts prodbox: its adoption diff
    # (every line added or removed, new files whole; tests/isolation.rs aside, which is new)
    # stays within 60 lines, and both versions build against the `.crate` files `cargo package`
    # just made, through the local registry it left in the target directory (`tmp-registry`),
    # never the workspace's sources (checked: every prodbox crate of `after` comes from it).
    # Their tests run against the real PostgreSQL and broker.
    local target="$1" registry="$1/package/tmp-registry"
    if [[ ! -d "$registry/index" ]]; then
        echo "cargo package left no local registry at $registry" >&2
        return 1
    fi
    local work target_dir lines
    work="$(mktemp -d)"
    target_dir="$(realpath "$target")"
    # Outside the workspace, as a service of its own; the workspace's lock file keeps the
    # dependencies at the versions (and builds) the workspace already has.
    cp -r examples/adopted/before examples/adopted/after "$work"/
    mv "$work/after/tests/isolation.rs" "$work/isolation.rs"
    lines="$(cd "$work" && { diff -ruN before after || true; } |
        awk '/^diff /{hunk=0} /^@@/{hunk=1; next} hunk && /^[-+]/{n++} END{print n+0}')"
    mv "$work/isolation.rs" "$work/after/tests/isolation.rs"
    echo "adoption diff: $lines lines changed"
    if (( lines > 60 )); then
        (cd "$work" && diff -ruN -x isolation.rs before after) >&2 || true
        echo "the adoption diff of examples/adopted is over 60 lines" >&2
        rm -rf "$work"
        return 1
    fi
    local packaged="sparse+https://prodbox.invalid/index/"
    {
        echo '[registries.prodbox]'
        echo "index = \"$packaged\""
        echo '[source.prodbox-packaged]'
        echo "registry = \"$packaged\""
        echo 'replace-with = "prodbox-local"'
        echo '[source.prodbox-local]'
        echo "local-registry = \"$(realpath "$registry")\""
        # prodbox's crates as crates.io would serve them once published: every one packaged.
        echo '[patch.crates-io]'
        local file
        for file in "$registry"/prodbox-*.crate; do
            file="$(basename "$file" .crate)"
            if [[ $file =~ ^(.+)-([0-9]+\.[0-9]+\.[0-9]+.*)$ ]]; then
                echo "${BASH_REMATCH[1]} = { version = \"=${BASH_REMATCH[2]}\", registry = \"prodbox\" }"
            fi
        done
    } > "$work/config.toml"
    cp Cargo.lock "$work/before/"
    cp Cargo.lock "$work/after/"
    (cd "$work/after" && cargo --config "$work/config.toml" metadata --format-version 1 --quiet) |
        python3 -c '
import json, sys
packaged = sys.argv[1]
crates = [(p["name"], p["source"]) for p in json.load(sys.stdin)["packages"]
          if p["name"].startswith("prodbox-")]
if not crates or any(source != packaged for _, source in crates):
    sys.exit(f"examples/adopted/after: prodbox crates not all from the packaged registry: {crates}")
print("from the packaged registry:", ", ".join(sorted(name for name, _ in crates)))
' "$packaged" || { rm -rf "$work"; return 1; }
    (cd "$work/before" && cargo test --quiet --target-dir "$target_dir") &&
        (cd "$work/after" &&
            cargo --config "$work/config.toml" test --quiet --target-dir "$target_dir") ||
        { rm -rf "$work"; return 1; }
    rm -rf "$work"
}

ensure_rust_components
ensure_postgres
ensure_redis
ensure_pgbouncer
ensure_cargo_hack
ensure_tansu
ensure_interop_python

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "clippy with docs/clippy.toml on scripts/lint-fixture: every call that loses the sandbox context is flagged"
check_lint_config

step "cargo hack --each-feature check: each feature of the library crates builds alone, without warnings"
libraries=(-p prodbox-core -p prodbox-http -p prodbox-grpc -p prodbox-kafka -p prodbox-db -p prodbox-redis)
hack_log="$(cargo hack --each-feature check "${libraries[@]}" 2>&1)" || { printf '%s\n' "$hack_log" >&2; exit 1; }
if grep -q '^warning' <<<"$hack_log"; then
    printf '%s\n' "$hack_log" >&2
    echo "a feature combination builds with warnings" >&2
    exit 1
fi
grep -c '^info: running' <<<"$hack_log" | sed 's/$/ feature combinations checked/'

step "cargo package --workspace: the publishable crates, each built from its own .crate file"
# prodbox's crates forgotten first: cargo takes a crate from a registry (the local one it
# packages into) as never changing, so it would verify against an earlier run's unpacked
# sources (under CARGO_HOME, in the local registries' `-<hash>` folders) and builds of the same
# version. Dependencies stay built, in a target directory of their own.
package_target=target/package-check
rm -rf "$package_target"/debug/.fingerprint/prodbox-* "$package_target"/debug/deps/*prodbox_* \
    "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/prodbox-* \
    "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/-*/prodbox-*
cargo package --workspace --exclude prodbox-examples --exclude prodbox-testkit --allow-dirty \
    --target-dir "$package_target" --quiet

step "examples/adopted: a service before and after adopting prodbox, built from the packaged crates"
adopted_example "$package_target"

step "cargo test --workspace (unit, integration and doc tests)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"

# One closing line for the whole run (cargo prints one per test binary, the last of which may
# be a crate with no doc tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "\n%d passed, %d failed\n", p, f }' "$log"
