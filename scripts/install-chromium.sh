#!/usr/bin/env bash
# Installs Debian's chromium when it is missing: the headless browser that runs the WebGPU kernel
# checks on SwiftShader (a CPU Vulkan) in CI. Prints the binary's path. Reusable by any browser test.
#
#   bash scripts/install-chromium.sh        # -> /usr/bin/chromium
#
# CHROMIUM_PATH, when set and executable, is used as is (no install).
set -euo pipefail
if [ -n "${CHROMIUM_PATH:-}" ] && [ -x "$CHROMIUM_PATH" ]; then echo "$CHROMIUM_PATH"; exit 0; fi
for c in /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -x "$c" ]; then echo "$c"; exit 0; fi
done
command -v apt-get >/dev/null || { echo "install-chromium: no chromium and no apt-get; set CHROMIUM_PATH" >&2; exit 1; }
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends chromium >&2
[ -x /usr/bin/chromium ] || { echo "install-chromium: apt-get installed no /usr/bin/chromium" >&2; exit 1; }
echo /usr/bin/chromium
