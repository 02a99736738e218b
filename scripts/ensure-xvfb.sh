#!/usr/bin/env bash
# The live window test runs `facial-search live` under a real X server (Debian's Xvfb) and presses a key with
# xdotool; the screenshot is Pillow's (ImageGrab with XCB). Install both programs when missing.
set -euo pipefail
if command -v Xvfb >/dev/null 2>&1 && command -v xdotool >/dev/null 2>&1; then exit 0; fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing Debian's xvfb and xdotool for the live window test" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends xvfb xauth xdotool >/dev/null
else
  echo "warning: no Xvfb/xdotool and no apt-get: the live window test will be skipped" >&2
fi
