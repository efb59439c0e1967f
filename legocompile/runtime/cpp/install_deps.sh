#!/usr/bin/env bash
# Build dependencies of the C++ runtime on Debian bookworm, as root. Idempotent: a second run changes nothing.
#
#   * nlohmann-json3-dev (JSON), libssl-dev (sha256 from OpenSSL's libcrypto), cmake, g++ (from bookworm);
#   * ONNX Runtime's C headers (1.21, from Debian trixie's libonnxruntime-dev, fetched with a private apt state so
#     the system's sources stay untouched) into $LEGOCOMPILE_ORT_HOME (default /opt/legocompile/onnxruntime):
#     $LEGOCOMPILE_ORT_HOME/include/onnxruntime_c_api.h. The library itself comes from the onnxruntime wheel at
#     build time (its C API is versioned: a newer library serves the headers' API 21).
set -euo pipefail
ORT_HOME="${LEGOCOMPILE_ORT_HOME:-/opt/legocompile/onnxruntime}"

need=()
for pkg in nlohmann-json3-dev libssl-dev cmake g++ make; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [[ ! -f "$ORT_HOME/include/onnxruntime_c_api.h" ]]; then
  D=$(mktemp -d)
  trap 'rm -rf "$D"' EXIT
  mkdir -p "$D/lists/partial" "$D/cache/archives/partial"
  echo "deb http://deb.debian.org/debian trixie main" > "$D/sources.list"
  A=(-o "Dir::Etc::SourceList=$D/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$D/lists"
     -o APT::Sandbox::User=root
     -o "Dir::Cache=$D/cache" -o Dir::State::status=/var/lib/dpkg/status)
  apt-get "${A[@]}" update -qq
  (cd "$D" && apt-get "${A[@]}" download -qq libonnxruntime-dev 2>/dev/null)
  dpkg -x "$D"/libonnxruntime-dev_*.deb "$D/root"
  mkdir -p "$ORT_HOME.tmp.$$/include"
  cp -r "$D/root/usr/include/onnxruntime/." "$ORT_HOME.tmp.$$/include/"
  rm -rf "$ORT_HOME"
  mkdir -p "$(dirname "$ORT_HOME")"
  mv "$ORT_HOME.tmp.$$" "$ORT_HOME"
fi
echo "legocompile C++ runtime dependencies: ok (ORT headers in $ORT_HOME/include)"
