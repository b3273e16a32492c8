#!/usr/bin/env bash
# The README's test command: installs what the tests need (redis-server, nginx, curl, chromium,
# kubectl, python3 + websockets), then checks formatting and lints and runs every test of the workspace. Fails
# loudly; never skips a test because something is missing.
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
# The TLS tests check that a real browser opens wss:// to the gateway.
command -v chromium >/dev/null || apt_install chromium
# The manifest tests render every kustomization with `kubectl kustomize`.
command -v kubectl >/dev/null || command -v kustomize >/dev/null || apt_install kubernetes-client
command -v python3 >/dev/null || apt_install python3 python3-websockets
if ! python3 -c 'import websockets' 2>/dev/null; then
    log "installing python websockets (pip)"
    python3 -m pip install --quiet 'websockets>=12' 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages 'websockets>=12' 2>/dev/null \
        || apt_install python3-websockets
    python3 -c 'import websockets' || die "python3 cannot import websockets after installing it"
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

log "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted: run 'cargo fmt --all'"
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test"
cargo test --workspace --all-targets
cargo test --workspace --doc --quiet
