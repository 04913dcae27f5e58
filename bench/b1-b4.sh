#!/usr/bin/env bash
# Rows B1–B4 in one run, one after the other (never side by side: each row
# times its peers A B A B itself), and their result tables together at the
# end. Each row's own script documents its method; this one only runs them:
#   B1 (full row: FROM scratch + ADD + RUN + COPY + ENV + CMD), B2, B3, B4
#   (both halves). The row scripts' environment applies (B3_REPS=3 to
#   shorten B3, BENCH_NO_FORGE=1, ...). Logs: $B_ALL_DIR (default
#   /tmp/forge-b1-b4), one per row.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${B_ALL_DIR:-/tmp/forge-b1-b4}
mkdir -p "$out"
rows=(
  "B1:b1-small-build.sh:B1_FULL=1"
  "B2:b2-debian-add.sh:"
  "B3:b3-copy-heavy.sh:"
  "B4:b4-run-overhead.sh:"
)
for row in "${rows[@]}"; do
  IFS=: read -r name script env <<<"$row"
  echo "== $name ($script) — log: $out/$name.log"
  # shellcheck disable=SC2086 # $env is one NAME=VALUE word or empty
  if ! env $env "$here/$script" >"$out/$name.log" 2>&1; then
    echo "$name failed; the end of its log:"; tail -20 "$out/$name.log"; exit 1
  fi
done
echo
echo "B1–B4 — the rows' tables (medians; ratios as each row computes them)"
for row in "${rows[@]}"; do
  name=${row%%:*}
  echo
  # Each row prints its tables after a blank line, headed "Bn — ...", and
  # its verdict lines ("targets: ...", "target: ...") after them.
  awk '/^B[0-9]( second half)? — /{p=1} p' "$out/$name.log"
done
