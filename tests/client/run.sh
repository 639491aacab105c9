#!/usr/bin/env bash
# Runs the client library's tests: installs the npm packages when they are missing, makes sure the
# relay binary is built (the same way the browser tests do), then `npm test` (tsc, node --test).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi
node --input-type=module -e "import { relayBinary } from '../browser/lib/relay.js'; relayBinary();"
exec npm test --no-update-notifier
