#!/usr/bin/env bash
# Refreshes the charting library the driver's dashboard embeds (driver/ui/vendor/), from the
# npm package pinned in driver/ui/package-lock.json. A development step: the vendored files
# are committed, so building weir needs neither npm nor a network.
set -euo pipefail
cd "$(dirname "$0")/../driver/ui"
npm ci --silent --ignore-scripts
cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css vendor/
cp node_modules/uplot/LICENSE vendor/uPlot.LICENSE
rm -rf node_modules
echo "ui-vendor: uPlot $(node -p "require('./package-lock.json').packages['node_modules/uplot'].version") in driver/ui/vendor"
