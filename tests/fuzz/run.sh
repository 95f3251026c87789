#!/usr/bin/env bash
# tests/fuzz/run.sh — runs every fuzz target for a fixed number of
# executions, minimises each corpus, and records what happened in
# tests/fuzz/last-run.txt (the figures the README quotes).
#
#   tests/fuzz/run.sh [RUNS]        default 1000000 executions per target
#   TARGETS="legacy_route" tests/fuzz/run.sh 10000
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); nightly features are
# enabled with RUSTC_BOOTSTRAP on a stable toolchain. A crash stops the
# script with libFuzzer's report; its input lands in tests/fuzz/artifacts/,
# which `cargo test` then replays. Review and commit the minimised corpus
# together with last-run.txt.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${1:-1000000}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 2; }
read -ra TARGETS <<< "${TARGETS:-query_verify legacy_route stats_mapper}"
command -v cargo-fuzz >/dev/null || { echo "needs cargo-fuzz: cargo install cargo-fuzz" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
files() { find "$HERE/corpus/$1" -type f | wc -l; }

cd "$ROOT"
OUT=$HERE/last-run.txt.new
{
  echo "tests/fuzz/run.sh $RUNS — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit:   $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (modified)')"
  echo "versions: $(rustc --version) | $(cargo fuzz --version) | libFuzzer with AddressSanitizer"
  echo "machine:  $(nproc) cores"
  echo
  printf '%-14s %12s %8s %12s %14s %14s  %s\n' target executions seconds "new inputs" "corpus before" "after cmin" "libFuzzer's last status line"
} > "$OUT"
for target in "${TARGETS[@]}"; do
  mkdir -p "$HERE/corpus/$target"
  before=$(files "$target")
  start=$(date +%s)
  echo "fuzzing $target: $RUNS executions" >&2
  rc=0
  cargo fuzz run --fuzz-dir tests/fuzz "$target" -- -runs="$RUNS" >"$LOG" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$LOG" >&2
    echo "fuzzing $target failed (exit $rc); libFuzzer's report is above" >&2
    exit 1
  fi
  secs=$(( $(date +%s) - start ))
  grown=$(files "$target")
  cargo fuzz cmin --fuzz-dir tests/fuzz "$target" >/dev/null 2>&1
  after=$(files "$target")
  status=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$LOG" | tail -1 | tr -s ' \t' '  ' || true)
  printf '%-14s %12s %8s %12s %14s %14s  %s\n' "$target" "$RUNS" "$secs" $((grown - before)) "$before" "$after" "$status" >> "$OUT"
done
mv "$OUT" "$HERE/last-run.txt"
cat "$HERE/last-run.txt"
