#!/usr/bin/env bash
# bench/pgo.sh — the profile-guided release build of pusher-cutover: the
# binary bench/run.sh measures, and the one to ship when speed matters.
#
#   bench/pgo.sh                  build target/pgo/release/pusher-cutover
#   TRAIN=20 bench/pgo.sh         seconds of training load per scenario (default 10)
#   bench/pgo.sh --no-install     do not apt-get what is missing
#   bench/pgo.sh --floor          also build examples/hyper_floor.rs the same way, with a
#                                 profile of its own: target/pgo-floor/release/examples/hyper_floor
#
# Three steps, all on loopback:
#  1. an instrumented release build (rustc -Cprofile-generate) in
#     target/pgo-generate;
#  2. training: that build runs in front of the canned nginx upstream of
#     bench/canned-upstream.sh (with a [telemetry] data_dir, like the
#     benchmark) and wrk drives freshly signed legacy triggers, legacy stats
#     and current-API triggers through it for TRAIN seconds each, then the
#     proxy is stopped with SIGTERM so that it writes its profile; the
#     profile is merged with llvm-profdata into
#     target/pgo/pusher-cutover-<hash of its contents>.profdata;
#  3. the release build again with that profile (rustc -Cprofile-use),
#     for every crate, in target/pgo; it fails if the profile does not
#     match the code it builds (see step 3).
# With --floor, the bare hyper forwarder bench/run.sh measures beside the
# proxy (examples/hyper_floor.rs) goes through the same three steps, trained
# on the same requests, so that both are compared built alike.
# The profile is the request mix the proxy exists for (the two deprecated
# calls and the current trigger it passes through); error paths are left
# cold on purpose. It is rebuilt every time, never committed: a profile
# from older code would be matched to the wrong functions.
# Both builds compile one copy of the sources (Cargo.toml, Cargo.lock, src,
# config, and examples with --floor), taken when the script starts: an edit to the working
# tree during the ten minutes would otherwise reach the second build and
# not the first, and the profile would silently miss the functions it
# changed (a dependency bumped in between loses all of that crate's). Such
# a mismatch is not an error to rustc; the build is merely slower.
#
# Needs nginx, wrk, python3 and curl (installed from Debian unless
# --no-install), and an llvm-profdata that reads the profiles of rustc's LLVM; the
# first that does, of $LLVM_PROFDATA, the rustup component llvm-tools,
# /usr/lib/llvm-*/bin/llvm-profdata newest first and llvm-profdata on PATH,
# is used. Debian's llvm-19 (installed when nothing as recent is there)
# reads rustc 1.95's (LLVM 22); llvm-14 does not. The binary's path is the last line
# printed on stdout. Stops only what it started; every wait has a timeout.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=bench/canned-upstream.sh
. "$HERE/canned-upstream.sh"

TRAIN=${TRAIN:-10}
INSTALL=1
FLOOR=0
for arg in "$@"; do
  case "$arg" in
    --no-install) INSTALL=0 ;;
    --floor) FLOOR=1 ;;
    -h|--help) sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done
[[ $TRAIN =~ ^[1-9][0-9]*$ ]] || { echo "TRAIN must be a positive number of seconds" >&2; exit 2; }

log() { echo "[pgo] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# llvm-profdata candidates, most likely to read rustc's profiles first.
profdata_candidates() {
  [ -n "${LLVM_PROFDATA:-}" ] && echo "$LLVM_PROFDATA"
  local sysroot host
  sysroot=$(rustc --print sysroot) host=$(rustc -vV | sed -n 's/^host: //p')
  [ -x "$sysroot/lib/rustlib/$host/bin/llvm-profdata" ] && echo "$sysroot/lib/rustlib/$host/bin/llvm-profdata"
  # shellcheck disable=SC2012
  ls -d /usr/lib/llvm-*/bin/llvm-profdata 2>/dev/null | sort -t- -k2 -n -r
  command -v llvm-profdata || true
}
# Profiles of rustc 1.95 (LLVM 22) need LLVM 19 or newer.
recent_profdata() {
  [ -n "${LLVM_PROFDATA:-}" ] && return 0
  local all; all=$(profdata_candidates)
  grep -q -e '/rustlib/' -e '/llvm-19/' -e '/llvm-[2-9][0-9]/' <<<"$all"
}

need=()
[ -n "$(find_bin nginx)" ] || need+=(nginx-light)
[ -n "$(find_bin wrk)" ] || need+=(wrk)
recent_profdata || need+=(llvm-19)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  [ "$INSTALL" -eq 1 ] || die "missing: ${need[*]} (run without --no-install)"
  log "installing from Debian: ${need[*]}"
  apt_install "${need[@]}" || die "apt-get install ${need[*]} failed"
fi
NGINX=$(find_bin nginx); WRK=$(find_bin wrk)
[ -n "$NGINX" ] && [ -n "$WRK" ] || die "need nginx and wrk"
for tool in python3 curl; do command -v "$tool" >/dev/null || die "need $tool"; done
PATH="$(dirname "$NGINX"):$PATH"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
GEN_DIR="$TARGET/pgo-generate"
USE_DIR="$TARGET/pgo"
FLOOR_DIR="$TARGET/pgo-floor"
mkdir -p "$GEN_DIR" "$USE_DIR"

# The copy both builds compile (see above), at a fixed path under the
# target directory so that cargo reuses its work between runs.
SRC="$TARGET/pgo-src"
rm -rf "$SRC" && mkdir -p "$SRC"
COPY=(Cargo.toml Cargo.lock src config)
[ "$FLOOR" -eq 0 ] || COPY+=(examples)
(cd "$ROOT" && cp -R "${COPY[@]}" "$SRC/") || die "cannot copy the sources to $SRC"

# ------------------------------------------------------------ 1. instrumented
log "1/3 instrumented build (target/pgo-generate)"
# -Cprofile-generate needs a directory; the training run names its file
# with LLVM_PROFILE_FILE, so build scripts' profiles stay out of it.
# One cargo invocation per binary, each as step 3 builds it: an example
# brings in the dev-dependencies, whose features (tokio's io-util and
# process) change the code, and the symbol names, of every crate built
# with them. Built together with the example, the proxy's instrumented
# tokio, hyper and h2 were not the ones step 3 compiled, so their profile
# matched nothing there (so it was with --floor from 2026-11-29 to
# 2026-12-07: the proxy's profile-guided build ran 3 % fewer instructions
# per passthrough call than its plain one, where a matching profile takes
# off about a quarter).
instrumented() {
  (cd "$SRC" && RUSTFLAGS="-Cprofile-generate=$GEN_DIR/build-scripts" CARGO_TARGET_DIR="$GEN_DIR" \
    timeout 1800 cargo build --release --locked "$@" >&2) || die "instrumented build failed ($*)"
}
instrumented --bin pusher-cutover
[ "$FLOOR" -eq 0 ] || instrumented --example hyper_floor

# ------------------------------------------------------------ 2. training
bench_begin $(( 3 + FLOOR ))
UP=${PORTS[0]} PC=${PORTS[1]} ADMIN=${PORTS[2]}
mkdir -p "$WORK/data" "$WORK/raw" "$WORK/floor-raw"
# train NAME PORT: TRAIN seconds of each scenario against 127.0.0.1:PORT.
train() {
  local sc out
  log "2/3 training $1: ${TRAIN}s each of legacy_trigger, legacy_stats, current_trigger"
  for sc in legacy_trigger legacy_stats current_trigger; do
    python3 "$HERE/bench.py" gen --scenario "$sc" --n 20000 --out "$WORK/$sc.reqs" >/dev/null
    out=$(timeout $(( TRAIN + 60 )) "$WRK" -t2 -c64 -d"${TRAIN}s" --timeout 5s -s "$HERE/requests.lua" \
      "http://127.0.0.1:$2/" -- "$WORK/$sc.reqs" 2>&1 | grep '^BENCH_RESULT' || true)
    [ -n "$out" ] || die "wrk gave no result for $sc"
    # A profile of error answers would optimise the wrong path.
    case "$out" in *" status=0 "*) ;; *) die "non-2xx answers while training $sc: $out" ;; esac
    log "  $sc: $(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$out") requests"
  done
}

# stop NAME PID LOG: SIGTERM, so that the instrumented process writes its
# profile on the way out; at most 30 s.
stop() {
  kill -TERM "$2"
  local deadline=$(( SECONDS + 30 ))
  while kill -0 "$2" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "the instrumented $1 did not stop within 30 s of SIGTERM"
    sleep 0.2
  done
  wait "$2" || die "the instrumented $1 exited with an error (log: $(tail -n 3 "$3"))"
  PIDS=()
}

# merge RAW_DIR NAME DIR: merges RAW_DIR's profiles into
# DIR/NAME-<hash of the contents>.profdata (older ones removed) and sets
# PROFILE to it. Cargo does not look into the profile: named after its
# contents, a new profile changes RUSTFLAGS, so every crate is built again.
PROFDATA=""
merge() {
  local merged="$3/merged.profdata" candidate
  compgen -G "$1/*.profraw" >/dev/null || die "the instrumented $2 wrote no profile"
  if [ -z "$PROFDATA" ]; then
    while read -r candidate; do
      if "$candidate" merge -o "$merged" "$1"/*.profraw 2>"$WORK/merge.err"; then PROFDATA=$candidate; break; fi
      log "$candidate cannot merge it: $(head -n 1 "$WORK/merge.err")"
    done < <(profdata_candidates)
    [ -n "$PROFDATA" ] || die "no llvm-profdata here reads rustc's profiles (LLVM $(rustc -vV | sed -n 's/^LLVM version: //p')); set LLVM_PROFDATA"
  else
    "$PROFDATA" merge -o "$merged" "$1"/*.profraw || die "llvm-profdata merge failed for $2"
  fi
  PROFILE="$3/$2-$(sha256sum "$merged" | cut -c1-16).profdata"
  find "$3" -maxdepth 1 -name "$2-*.profdata" ! -path "$PROFILE" -delete
  mv "$merged" "$PROFILE"
  log "profile: $PROFILE ($("$PROFDATA" --version 2>&1 | grep -m1 -o 'LLVM version [0-9.]*'), $(du -h "$PROFILE" | cut -f1))"
}

bench_proxy_config "$PC" "$ADMIN" "$UP" "$WORK/data" > "$WORK/pc.toml"
LLVM_PROFILE_FILE="$WORK/raw/pusher-cutover-%p.profraw" \
  "$GEN_DIR/release/pusher-cutover" serve --config "$WORK/pc.toml" > "$WORK/pc.log" 2>&1 &
PID=$!
PIDS=("$PID")
wait_ready "http://127.0.0.1:$ADMIN/readyz" "$PID" \
  || { tail -n 20 "$WORK/pc.log" >&2; die "the instrumented proxy did not start"; }
train pusher-cutover "$PC"
curl -s --max-time 5 -o /dev/null "http://127.0.0.1:$ADMIN/metrics" || true
stop proxy "$PID" "$WORK/pc.log"
merge "$WORK/raw" pusher-cutover "$USE_DIR"
PC_PROFILE=$PROFILE

if [ "$FLOOR" -eq 1 ]; then
  FPORT=${PORTS[3]}
  mkdir -p "$FLOOR_DIR"
  LLVM_PROFILE_FILE="$WORK/floor-raw/hyper_floor-%p.profraw" \
    "$GEN_DIR/release/examples/hyper_floor" "127.0.0.1:$FPORT" "127.0.0.1:$UP" > "$WORK/floor.log" 2>&1 &
  PID=$!
  PIDS=("$PID")
  wait_ready "http://127.0.0.1:$FPORT/" "$PID" \
    || { tail -n 20 "$WORK/floor.log" >&2; die "the instrumented hyper_floor did not start"; }
  train hyper_floor "$FPORT"
  stop hyper_floor "$PID" "$WORK/floor.log"
  merge "$WORK/floor-raw" hyper_floor "$FLOOR_DIR"
  FLOOR_PROFILE=$PROFILE
fi

# ------------------------------------------------------------ 3. optimised
# optimised NAME DIR PROFILE CRATE CARGO-ARGS...: the release build with
# PROFILE. Its rustc names each function of CRATE (the binary's own crate)
# that the profile has no data for (-pgo-warn-missing-function): none in a
# profile of the same code, every one in a profile of other code (see step
# 1: features that differ rename a crate's functions and those of every
# crate built on it). Only this package's crates are named; cargo builds
# the dependencies with --cap-lints allow, which silences rustc's warnings.
# The build fails if more than MISSING_MAX (default 100) of CRATE's
# functions have no data: a profile-guided build that matched nothing
# would only be slower, and silently.
MISSING_MAX=${MISSING_MAX:-100}
optimised() {
  local name=$1 dir=$2 profile=$3 crate=$4 log="$WORK/$1-build.log" missing
  shift 4
  if ! (cd "$SRC" && RUSTFLAGS="-Cprofile-use=$profile -Cllvm-args=-pgo-warn-missing-function" \
    CARGO_TARGET_DIR="$dir" timeout 1800 cargo build --release --locked "$@" > "$log" 2>&1); then
    grep -v -e 'no profile data available for function' -e '^$' "$log" | tail -n 30 >&2
    die "profile-guided build of $name failed"
  fi
  grep -v -e 'no profile data available for function' -e '^$' "$log" >&2 || true
  missing=$(grep -cE "^warning: $crate\.[0-9a-f]+-cgu\.[0-9]+: no profile data available for function" "$log" || true)
  log "$name: $missing functions of $crate without profile data (at most $MISSING_MAX)"
  [ "$missing" -le "$MISSING_MAX" ] \
    || die "the profile does not match the code of $name: $missing functions of $crate have no data in it"
}
log "3/3 release build with the profile (target/pgo)"
optimised pusher-cutover "$USE_DIR" "$PC_PROFILE" pusher_cutover --bin pusher-cutover
if [ "$FLOOR" -eq 1 ]; then
  log "3/3 release build of examples/hyper_floor.rs with its profile (target/pgo-floor)"
  optimised hyper-floor "$FLOOR_DIR" "$FLOOR_PROFILE" hyper_floor --example hyper_floor
  log "floor: $FLOOR_DIR/release/examples/hyper_floor"
fi
echo "$USE_DIR/release/pusher-cutover"
