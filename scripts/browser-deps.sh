#!/usr/bin/env bash
# The browser test drives Debian's Chromium through ChromeDriver. Install them when missing and possible;
# otherwise say how (the test then fails with the same command, unless RELAY_SKIP_BROWSER=1 is set).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi
if [[ ${RELAY_SKIP_BROWSER:-} == 1 ]]; then
  echo "browser: RELAY_SKIP_BROWSER=1, not installing Chromium (the browser test will skip itself)" >&2
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "browser: installing chromium and chromium-driver (apt-get) for the live-page test" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
else
  echo "browser: missing chromium/chromedriver. Debian/Ubuntu: sudo apt-get install -y chromium chromium-driver" >&2
  echo "browser: (or set RELAY_SKIP_BROWSER=1 to skip the browser test on this machine)" >&2
fi
