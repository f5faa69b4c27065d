#!/usr/bin/env bash
# Installs what the browser test (tests/tests/browser_call.rs, tests/browser/call.mjs) needs:
# Debian's Chromium at /usr/bin/chromium and playwright-core in tests/browser/node_modules.
# Idempotent: prints nothing and changes nothing when both are already there.
# Playwright never downloads a browser here: playwright-core has no install step, and the
# test launches /usr/bin/chromium by path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  SUDO=(sudo)
fi

if [ ! -x /usr/bin/chromium ]; then
  echo "browser install: installing Debian package chromium"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq chromium >/dev/null
  [ -x /usr/bin/chromium ] || {
    echo "browser install: /usr/bin/chromium still missing after installing chromium" >&2
    exit 1
  }
fi

command -v npm >/dev/null 2>&1 || {
  echo "browser install: npm is missing (Debian package npm)" >&2
  exit 1
}

# npm ci writes node_modules/.package-lock.json last; when it is newer than package.json
# and package-lock.json, the installed tree is the one the lock file asks for.
stamp="$here/node_modules/.package-lock.json"
if [ ! -f "$stamp" ] || [ "$here/package-lock.json" -nt "$stamp" ] \
  || [ "$here/package.json" -nt "$stamp" ] || [ ! -d "$here/node_modules/playwright-core" ]; then
  echo "browser install: npm ci in tests/browser"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
