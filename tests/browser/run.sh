#!/usr/bin/env bash
# Runs the browser tests of the demo page: installs the npm packages when they are missing, makes
# sure the relay binary and the cluster tests' proxy are built, then runs `npm test`. Exits non-zero on any failure.
#
# Where it may (root, with unshare and ip), it runs the tests in a private network namespace that
# has only a loopback interface, so not one packet of them (HTTP, WebSocket, ICE, DNS) can leave
# the machine. INTERCESSOR_BROWSER_NETNS=0 runs them in the ordinary network instead.
#
# Needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium); with it missing the
# tests fail, unless INTERCESSOR_SKIP_BROWSER=1 makes them skip with a warning. cluster.test.js
# also needs redis-server (apt-get install redis-server).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi

# Build (or rebuild) the relay and the cluster tests' proxy now, while the network is still there
# for cargo if it needs it.
node --input-type=module -e "import { relayBinary } from './lib/relay.js'; relayBinary();"
node --input-type=module -e "import { proxyBinary } from './lib/cluster.js'; proxyBinary();"

if [ "${INTERCESSOR_BROWSER_NETNS:-1}" != 0 ] && command -v ip >/dev/null 2>&1 \
  && unshare --net true >/dev/null 2>&1; then
  echo "run.sh: running the browser tests in a network namespace with only loopback"
  exec unshare --net -- sh -c 'ip link set lo up && exec npm test --no-update-notifier'
fi
exec npm test --no-update-notifier
