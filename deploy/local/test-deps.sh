#!/usr/bin/env bash
# Installs the tools the test suite runs, when missing (`make deps`, a step of `make test`):
#   - promtool and prometheus (Debian's `prometheus`): rule unit tests, `promtool check metrics`, and the
#     end-to-end test that runs a real Prometheus server against a real worker (never as a system service);
#   - kcat (Debian's `kcat`): the dialer-side Kafka client the docs and their tests use;
#   - chromium (Debian's `chromium`): the backtest report's render test opens the HTML in a headless browser;
#   - the Docker Compose v2 CLI plugin, built from its Go module (needs `go`): `docker compose config` validates
#     deploy/docker-compose.yml without a Docker engine. The first build takes a few minutes.
#
# Usage: deploy/local/test-deps.sh
# Environment: FATIGUE_COMPOSE_VERSION (default v2.40.3)
set -euo pipefail

COMPOSE_VERSION=${FATIGUE_COMPOSE_VERSION:-v2.40.3}

log() { printf '[deps] %s\n' "$*" >&2; }
die() {
    printf '[deps] ERROR: %s\n' "$*" >&2
    exit 1
}

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

# Same approach as deploy/local/stack.sh uses for redis-server: apt-get, with one `apt-get update` when the
# package lists are missing or stale.
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "$* missing and apt-get is unavailable: install $* yourself"
    if [[ ${#SUDO[@]} -gt 0 ]] && ! command -v sudo >/dev/null 2>&1; then
        die "$* missing: install them (apt-get install $*) or run as root"
    fi
    log "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # another apt run (e.g. a second terminal) holds the lock for a while: wait rather than fail
    local -a apt=(apt-get -o DPkg::Lock::Timeout=600)
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        ${SUDO[@]+"${SUDO[@]}"} "${apt[@]}" update -q
    fi
    # --no-install-recommends: the exporters and web assets Prometheus recommends are not needed
    if ! ${SUDO[@]+"${SUDO[@]}"} "${apt[@]}" install -y -q --no-install-recommends "$@"; then
        ${SUDO[@]+"${SUDO[@]}"} "${apt[@]}" update -q
        ${SUDO[@]+"${SUDO[@]}"} "${apt[@]}" install -y -q --no-install-recommends "$@"
    fi
}

ensure_debian_tools() {
    local -a missing=()
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
    command -v kcat >/dev/null 2>&1 || missing+=(kcat)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    apt_install "${missing[@]}"
    command -v promtool >/dev/null 2>&1 || die "promtool is still missing after apt-get install prometheus"
    command -v kcat >/dev/null 2>&1 || die "kcat is still missing after apt-get install kcat"
    command -v chromium >/dev/null 2>&1 || die "chromium is still missing after apt-get install chromium"
}

compose_available() {
    { command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; } ||
        command -v docker-compose >/dev/null 2>&1
}

ensure_compose() {
    compose_available && return 0
    command -v go >/dev/null 2>&1 ||
        die "neither 'docker compose' nor 'docker-compose' found, and no 'go' to build it: install Docker Compose v2"
    local plugins
    if [[ $(id -u) -eq 0 ]]; then
        plugins=/usr/local/lib/docker/cli-plugins
    else
        plugins=$HOME/.docker/cli-plugins
    fi
    log "building the Docker Compose $COMPOSE_VERSION CLI plugin from its Go module into $plugins (first run only)"
    local dir
    # `go install pkg@version` refuses modules with replace directives; build inside the module instead
    dir=$(go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [[ -n $dir && -d $dir ]] || die "go mod download github.com/docker/compose/v2@$COMPOSE_VERSION failed"
    mkdir -p "$plugins"
    (cd "$dir" && go build -trimpath -ldflags "-X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
        -o "$plugins/docker-compose.tmp" ./cmd)
    mv "$plugins/docker-compose.tmp" "$plugins/docker-compose"
    if ! command -v docker >/dev/null 2>&1; then
        # no Docker CLI to host the plugin: the binary also works standalone as docker-compose
        mkdir -p "$HOME/.local/bin"
        ln -sf "$plugins/docker-compose" "$HOME/.local/bin/docker-compose"
        command -v docker-compose >/dev/null 2>&1 || die "installed $plugins/docker-compose; put ~/.local/bin on PATH"
    fi
    compose_available || die "docker compose is still unavailable after building it"
}

ensure_debian_tools
ensure_compose
log "test tools ready: $(promtool --version 2>&1 | head -n1 | cut -d' ' -f1-3), kcat, compose"
