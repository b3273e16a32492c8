#!/usr/bin/env bash
# The README's test command: installs what the tests need (redis-server, nginx, curl, kubectl,
# python3 + websockets, node + npm, chromium), then checks formatting and lints and runs every test
# of the workspace, then the JS client's and the demo chat's tests (clients/js: npm ci, node --test
# against the binaries cargo built). Fails loudly; never skips a test because something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        die "missing $*: install with 'sudo apt-get install -y $*' and run again"
    fi
    command -v apt-get >/dev/null || die "missing $* and no apt-get to install it"
    log "installing $* (apt)"
    if [ -z "${RINGCAST_APT_UPDATED:-}" ]; then
        apt-get update -qq || die "apt-get update failed"
        export RINGCAST_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx  # loadtest/bench.sh --quick
command -v curl >/dev/null || apt_install curl
# The manifest tests render every kustomization with `kubectl kustomize` (kustomize v4 or newer:
# Debian's kubernetes-client is kubectl 1.20 and too old, so it is no fallback; the `kubectl`
# package comes from the Kubernetes apt repository, when configured).
if ! command -v kubectl >/dev/null; then
    (apt_install kubectl) || true
    command -v kubectl >/dev/null || die "kubectl (with kustomize v4+) is needed: install it from https://kubernetes.io/docs/tasks/tools/ and run again"
fi
# A real Prometheus and promtool check the dashboard and the alerts.
command -v prometheus >/dev/null && command -v promtool >/dev/null || apt_install prometheus
command -v python3 >/dev/null || apt_install python3 python3-websockets
if ! python3 -c 'import websockets' 2>/dev/null; then
    log "installing python websockets (pip)"
    python3 -m pip install --quiet 'websockets>=12' 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages 'websockets>=12' 2>/dev/null \
        || apt_install python3-websockets
    python3 -c 'import websockets' || die "python3 cannot import websockets after installing it"
fi
# Manifests are validated against the Kubernetes schemas and the compose spec.
if ! command -v kubernetes-validate >/dev/null || ! command -v check-jsonschema >/dev/null; then
    log "installing kubernetes-validate and check-jsonschema (pip)"
    python3 -m pip install --quiet kubernetes-validate check-jsonschema 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages kubernetes-validate check-jsonschema 2>/dev/null \
        || die "could not install kubernetes-validate and check-jsonschema with pip"
    command -v kubernetes-validate >/dev/null && command -v check-jsonschema >/dev/null \
        || die "kubernetes-validate or check-jsonschema is not on PATH after installing it (pip's bin directory?)"
fi
# The server API tests check every answer against docs/api/openapi.json with a real validator.
if ! python3 -c 'import openapi_spec_validator, openapi_schema_validator' 2>/dev/null; then
    command -v pip3 >/dev/null || python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    log "installing openapi-spec-validator (pip)"
    python3 -m pip install --quiet 'openapi-spec-validator>=0.7' 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages 'openapi-spec-validator>=0.7' 2>/dev/null \
        || die "could not install openapi-spec-validator with pip"
    python3 -c 'import openapi_spec_validator, openapi_schema_validator' \
        || die "python3 cannot import openapi_spec_validator after installing it"
fi

# The JS client's tests (clients/js) run on Node >= 20 and drive the demo chat in a headless Chromium.
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
    || die "node $(node --version) is too old for clients/js: install Node 20 or later"
command -v chromium >/dev/null || apt_install chromium

# A clean build of every test target takes about 5 GB under target/ (measured on a clean clone,
# profile.dev in Cargo.toml); say so up front rather than as a linker crash half-way through.
avail_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ -n "$avail_kb" ] && [ "$avail_kb" -lt $((6 * 1024 * 1024)) ] && [ ! -d "${CARGO_TARGET_DIR:-target}/debug/deps" ]; then
    log "warning: only $((avail_kb / 1024)) MB free here; a clean build of the tests needs about 5 GB"
fi

log "promtool check rules / test rules"
promtool check rules deploy/prometheus/alerts.yml >/dev/null || die "deploy/prometheus/alerts.yml does not pass promtool check rules"
promtool test rules deploy/prometheus/alerts.test.yml || die "the alert unit tests (deploy/prometheus/alerts.test.yml) fail"

log "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted: run 'cargo fmt --all'"
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test"
cargo test --workspace --all-targets
cargo test --workspace --doc --quiet

# The binaries `cargo test` just built (all targets include them): the JS tests start real Redis,
# nodes and a gateway from there.
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
[ -x "$target_dir/debug/ringcast-node" ] && [ -x "$target_dir/debug/ringcast-gateway" ] \
    || die "no ringcast-node / ringcast-gateway in $target_dir/debug after cargo test"
log "npm ci (clients/js)"
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in clients/js"
log "node --test (clients/js: client, demo chat in chromium)"
(cd clients/js && RINGCAST_BIN_DIR="$target_dir/debug" npm test) || die "clients/js tests failed"
