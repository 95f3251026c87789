#!/usr/bin/env bash
# Installs the parts the whole test suite needs beyond a Rust toolchain
# (`cargo test --locked -- --include-ignored`), on Debian, as root or
# through sudo. Used by .ci/run and by the README. Safe to run repeatedly:
# whatever is already there is kept.
#
#   tests/install-parts.sh && cargo test --locked -- --include-ignored
#
# Parts:
#   - Debian packages (DEBIAN_PACKAGES below), installed together after one
#     `apt-get update`, each checked with dpkg, then checked again by using
#     them (see check_debian_parts);
#   - Sockudo 5.2.0 (the end-to-end suite's upstream), with
#     `cargo install --locked` into $CARGO_HOME/bin unless a 5.2.0 binary is
#     found through SOCKUDO_BIN or PATH (about 20 minutes on 2 cores).
#
# To add a Debian package, add it to DEBIAN_PACKAGES with what needs it,
# and a check of what it provides to check_debian_parts.
set -euo pipefail
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
caller_path="$PATH"
export PATH="$cargo_bin:$PATH"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

SOCKUDO_VERSION=5.2.0

DEBIAN_PACKAGES=(
  # Sockudo's build scripts (prost-build, in metrics-exporter-tcp and
  # others) run protoc ...
  protobuf-compiler
  # ... on .proto files that import Google's, such as
  # google/protobuf/timestamp.proto.
  libprotobuf-dev
  # openssl-sys (not vendored in Sockudo's tree) finds OpenSSL with
  # pkg-config.
  pkg-config
  libssl-dev
  # The report test (tests/integration/report.rs) loads the HTML report
  # in headless Chromium and checks that its SVG chart renders.
  chromium
  # The fleet test (tests/integration/fleet.rs) runs /usr/bin/prometheus
  # scraping two sidecars; installed without starting the packaged
  # service (see install_debian_packages).
  prometheus
)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

is_installed() {
  dpkg-query -W -f '${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed
}

install_debian_packages() {
  if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    echo "not Debian (no dpkg-query/apt-get): install the equivalents of ${DEBIAN_PACKAGES[*]} yourself"
    return
  fi
  local missing=()
  for package in "${DEBIAN_PACKAGES[@]}"; do
    is_installed "$package" || missing+=("$package")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "Debian packages present: ${DEBIAN_PACKAGES[*]}"
    return
  fi
  echo "installing ${missing[*]}"
  # No package's service is started (Debian's prometheus would start one
  # on port 9090): policy-rc.d refuses every start while installing.
  local policy=/usr/sbin/policy-rc.d made_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 0755 "$policy"
    made_policy=true
  fi
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if [ "$made_policy" = true ]; then as_root rm -f "$policy"; fi
}

# What the packages are for, tried the way the builds use it; fails saying
# which is missing.
check_debian_parts() {
  if ! command -v protoc >/dev/null; then
    echo "protoc not found (Debian: protobuf-compiler)" >&2
    return 1
  fi
  printf 'syntax = "proto3";\nimport "google/protobuf/timestamp.proto";\nmessage M { google.protobuf.Timestamp at = 1; }\n' >"$work/check.proto"
  if ! protoc --proto_path="$work" --descriptor_set_out=/dev/null "$work/check.proto"; then
    echo "protoc cannot import google/protobuf/timestamp.proto (Debian: libprotobuf-dev)" >&2
    return 1
  fi
  echo "$(protoc --version), with google/protobuf/timestamp.proto"
  if ! pkg-config --exists openssl; then
    echo "pkg-config finds no openssl (Debian: pkg-config, libssl-dev)" >&2
    return 1
  fi
  echo "pkg-config: openssl $(pkg-config --modversion openssl)"
  if ! command -v chromium >/dev/null; then
    echo "chromium not found (Debian: chromium)" >&2
    return 1
  fi
  printf '<!DOCTYPE html><svg xmlns="http://www.w3.org/2000/svg"><polyline id="check-ok" points="0,0 1,1"/></svg>\n' >"$work/check.html"
  if ! chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/chromium-profile" --dump-dom "file://$work/check.html" 2>/dev/null |
    grep -q 'id="check-ok"'; then
    echo "headless chromium does not render an SVG page (Debian: chromium)" >&2
    return 1
  fi
  echo "$(chromium --version 2>/dev/null), renders SVG headless"
  if [ ! -x /usr/bin/prometheus ] || ! command -v promtool >/dev/null; then
    echo "/usr/bin/prometheus or promtool not found (Debian: prometheus)" >&2
    return 1
  fi
  printf 'global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: check\n    static_configs:\n      - targets: [127.0.0.1:9]\n' >"$work/prometheus.yml"
  if ! promtool check config "$work/prometheus.yml" >/dev/null; then
    echo "promtool rejects a one-job configuration (Debian: prometheus)" >&2
    return 1
  fi
  echo "$(/usr/bin/prometheus --version 2>&1 | head -n 1), config checked by promtool"
}

sockudo_bin() {
  if [ -n "${SOCKUDO_BIN:-}" ]; then echo "$SOCKUDO_BIN"; else command -v sockudo || true; fi
}

have_sockudo() {
  local bin
  bin="$(sockudo_bin)"
  [ -n "$bin" ] && [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qx "sockudo $SOCKUDO_VERSION"
}

install_sockudo() {
  if have_sockudo; then
    echo "sockudo $SOCKUDO_VERSION present: $(sockudo_bin)"
    return
  fi
  if [ -n "${SOCKUDO_BIN:-}" ]; then
    echo "SOCKUDO_BIN=$SOCKUDO_BIN is not sockudo $SOCKUDO_VERSION; unset it to install one" >&2
    return 1
  fi
  echo "installing sockudo $SOCKUDO_VERSION (cargo install, about 20 minutes on 2 cores)"
  time cargo install sockudo --version "$SOCKUDO_VERSION" --locked
  if ! have_sockudo; then
    echo "cargo install finished, but no sockudo $SOCKUDO_VERSION is found in $cargo_bin" >&2
    return 1
  fi
  echo "sockudo $SOCKUDO_VERSION: $(sockudo_bin)"
}

# The tests look for Sockudo on the PATH they are run with.
check_caller_path() {
  if [ -z "${SOCKUDO_BIN:-}" ] && ! PATH="$caller_path" command -v sockudo >/dev/null; then
    echo "note: sockudo is in $cargo_bin, which is not on your PATH; add it, or run the tests" \
      "with SOCKUDO_BIN=$(sockudo_bin)"
  fi
}

echo "--- test parts: Debian packages"
install_debian_packages
check_debian_parts

echo "--- test parts: sockudo $SOCKUDO_VERSION"
install_sockudo
check_caller_path
