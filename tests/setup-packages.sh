#!/usr/bin/env bash
# Installs the Debian packages the test suites start for real. Idempotent:
# does nothing when they are already there.
set -euo pipefail
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
  exit 0
fi
echo "installing: ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start system services we do not use; the tests start their own.
for s in redis-server nginx haproxy prometheus; do $SUDO systemctl disable --now "$s" >/dev/null 2>&1 || true; done
