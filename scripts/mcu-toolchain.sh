#!/usr/bin/env bash
# The cross compiler of the C export's microcontroller test (tests/test_export.py,
# test_mlp1_c_export_fits_a_microcontroller): Debian's gcc-arm-none-eabi and newlib, installed with apt-get
# when arm-none-eabi-gcc is missing (needs root). Without it the test builds with the host's cc -m32, or
# skips and says why.
#   usage: scripts/mcu-toolchain.sh      (or: make mcu-toolchain)
set -Eeuo pipefail
fail() { echo "error: $*" >&2; exit 2; }

if command -v arm-none-eabi-gcc >/dev/null; then
  echo "arm-none-eabi-gcc is installed: $(arm-none-eabi-gcc --version | head -n 1)"
  exit 0
fi
[ "$(id -u)" = 0 ] || fail "installing gcc-arm-none-eabi needs root (apt-get); or install an arm-none-eabi toolchain"
command -v apt-get >/dev/null || fail "no apt-get here: install an arm-none-eabi-gcc toolchain with your package manager"
log="$(mktemp /tmp/nitro-mcu-toolchain.XXXXXX)"
echo "installing gcc-arm-none-eabi libnewlib-arm-none-eabi (apt-get)" >&2
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    gcc-arm-none-eabi libnewlib-arm-none-eabi; } >"$log" 2>&1 \
  || fail "could not install gcc-arm-none-eabi with apt-get (see $log): $(tail -n 1 "$log")"
rm -f "$log"
echo "installed: $(arm-none-eabi-gcc --version | head -n 1)"
