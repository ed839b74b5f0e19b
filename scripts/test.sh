#!/usr/bin/env bash
# The project's test command (README; .ci/run calls exactly this). Works on a fresh Debian clone:
# installs missing system packages and npm dependencies (which builds the libtorch addon), then runs the
# type check, linter, formatter check and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
[ -f /usr/include/torch/csrc/api/include/torch/torch.h ] || need+=(libtorch-dev)
# Gloo's headers, for the addon's distributed backend (native/distributed.cc); libtorch_cpu links libgloo itself
[ -f /usr/include/gloo/context.h ] || need+=(libgloo-dev)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v python3 >/dev/null || need+=(python3)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# every dependency of package.json installed (a checkout that gained one reinstalls) and the addon built
deps_installed() {
  node -e 'const p = require("./package.json");
    for (const d of Object.keys({ ...p.dependencies, ...p.devDependencies })) require("fs").accessSync(`node_modules/${d}/package.json`);' 2>/dev/null
}
# the addon built, and not older than its sources (a checkout that changed native/ rebuilds it)
addon_current() {
  [ -f build/Release/anoseg_torch.node ] && [ -z "$(find native binding.gyp -newer build/Release/anoseg_torch.node)" ]
}
deps_installed && addon_current || npm install --no-audit --no-fund
npm run typecheck
npm run lint
npx vitest run
