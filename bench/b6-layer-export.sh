#!/usr/bin/env bash
# B6: layer export of a ~1 GB / 100k-file tree — MB/s (uncompressed tar bytes per
# second) including both sha256s (blob digest and diff_id), and identical digests
# for any thread count.
#
# Peers: buildah push gzip ~60 MB/s; pigz -6 54 MB/s. forge targets: gzip-6 >= 120
# MB/s, zstd-3 >= 400 MB/s (2-core machine), parallel gzip >= 1.7x forge 1-thread.
#
# Runs A B A B ... (REPS, default 5) and prints medians. Environment:
#   B6_MB=1000 B6_FILES=100000   tree size (B6_QUICK=1: 200 MB / 20k files)
#   B6_REPS=5                     repetitions
#   B6_DIR=/tmp/forge-b6          where the tree is generated (reused if present)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${B6_QUICK:-}" == 1 ]]; then
  MB=${B6_MB:-200}; FILES=${B6_FILES:-20000}
else
  MB=${B6_MB:-1000}; FILES=${B6_FILES:-100000}
fi
REPS=${B6_REPS:-5}
DIR=${B6_DIR:-/tmp/forge-b6}
TREE="$DIR/tree-${MB}MB-${FILES}"
NPROC=$(nproc)

cargo build --release --locked -q -p forge-cache --example layer_export
BIN=target/release/examples/layer_export

if [[ ! -f "$TREE.done" ]]; then
  echo "generating $TREE ($MB MB, $FILES files, deterministic)…"
  rm -rf "$TREE"
  "$BIN" gen "$TREE" "$MB" "$FILES"
  touch "$TREE.done"
fi
# Warm the page cache so every contender reads from memory.
tar --sort=name -cf - -C "$TREE" . | sha256sum >/dev/null
TAR_BYTES=$(tar --sort=name -cf - -C "$TREE" . | wc -c)
echo "tree: $(du -sh "$TREE" | cut -f1) on disk, $(find "$TREE" -type f | wc -l) files, tar $TAR_BYTES bytes, $NPROC cores"

declare -A RESULTS
DIGESTS=$(mktemp)
trap 'rm -f "$DIGESTS"' EXIT

forge() { # name compression threads
  local line
  line=$("$BIN" export "$TREE" "$2" "$3")
  echo "$2 threads=$3 $(grep -o 'digest=[^ ]*' <<<"$line")" >>"$DIGESTS"
  RESULTS[$1]+="$(grep -o 'MB/s=[0-9.]*' <<<"$line" | cut -d= -f2) "
}

shell_pipe() { # name command (tar stream on stdin); MB/s over the tar bytes
  local start end
  start=$(date +%s.%N)
  bash -c "tar --sort=name -cf - -C '$TREE' . | $2" >/dev/null
  end=$(date +%s.%N)
  RESULTS[$1]+="$(awk -v b="$TAR_BYTES" -v s="$start" -v e="$end" 'BEGIN{printf "%.1f", b/1e6/(e-s)}') "
}

HAVE_BUILDAH=0
if command -v buildah >/dev/null; then HAVE_BUILDAH=1; fi
buildah_push() {
  local start end ctr out
  out=$(mktemp -d)
  start=$(date +%s.%N)
  ctr=$(buildah from scratch)
  buildah copy -q "$ctr" "$TREE" / >/dev/null
  buildah commit -q "$ctr" b6-layer-export >/dev/null
  buildah push -q b6-layer-export "oci:$out/img:latest" >/dev/null
  end=$(date +%s.%N)
  buildah rm "$ctr" >/dev/null; buildah rmi b6-layer-export >/dev/null || true
  rm -rf "$out"
  RESULTS[buildah]+="$(awk -v b="$TAR_BYTES" -v s="$start" -v e="$end" 'BEGIN{printf "%.1f", b/1e6/(e-s)}') "
}

for ((i = 1; i <= REPS; i++)); do
  echo "round $i/$REPS"
  forge "forge gzip-6 ($NPROC thr)" gzip "$NPROC"
  shell_pipe "tar | pigz -6 | sha256sum" "pigz -6 -p $NPROC | sha256sum"
  forge "forge zstd-3 ($NPROC thr)" zstd "$NPROC"
  shell_pipe "tar | zstd -3 -T$NPROC | sha256sum" "zstd -q -3 -T$NPROC | sha256sum"
  forge "forge gzip-6 (1 thr)" gzip 1
  forge "forge zstd-3 (1 thr)" zstd 1
  if [[ $i == 1 ]]; then # digest check with more threads than cores
    forge "forge gzip-6 (8 thr)" gzip 8
    forge "forge zstd-3 (8 thr)" zstd 8
  fi
  if [[ $i -le 2 ]]; then # slow references: fewer rounds
    shell_pipe "tar | gzip -6 | sha256sum" "gzip -6 | sha256sum"
  fi
  if [[ $HAVE_BUILDAH == 1 && $i -le 3 ]]; then buildah_push; fi
done
if [[ $HAVE_BUILDAH == 0 ]]; then echo "buildah: not installed, skipped"; fi

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo
printf '%-36s %10s %8s %s\n' "contender" "MB/s" "runs" "vs pigz -6"
PIGZ=$(median <<<"${RESULTS["tar | pigz -6 | sha256sum"]}")
for name in "forge gzip-6 ($NPROC thr)" "forge gzip-6 (1 thr)" "tar | pigz -6 | sha256sum" "tar | gzip -6 | sha256sum" \
  "forge zstd-3 ($NPROC thr)" "forge zstd-3 (1 thr)" "tar | zstd -3 -T$NPROC | sha256sum" buildah; do
  [[ -n "${RESULTS[$name]:-}" ]] || continue
  m=$(median <<<"${RESULTS[$name]}")
  n=$(wc -w <<<"${RESULTS[$name]}")
  printf '%-36s %10s %8s %sx\n' "$name" "$m" "$n" "$(awk -v a="$m" -v b="$PIGZ" 'BEGIN{printf "%.2f", a/b}')"
done
echo
G=$(median <<<"${RESULTS["forge gzip-6 ($NPROC thr)"]}")
G1=$(median <<<"${RESULTS["forge gzip-6 (1 thr)"]}")
Z=$(median <<<"${RESULTS["forge zstd-3 ($NPROC thr)"]}")
echo "parallel gzip vs forge 1-thread gzip: $(awk -v a="$G" -v b="$G1" 'BEGIN{printf "%.2f", a/b}')x (target >= 1.7x on 2 cores)"
echo "targets: gzip-6 $G MB/s (>= 120), zstd-3 $Z MB/s (>= 400)"
echo
echo "digests by thread count (must be one per compression):"
sort -u "$DIGESTS" | awk '{print "  " $0}'
n_gzip=$(grep '^gzip' "$DIGESTS" | awk '{print $3}' | sort -u | wc -l)
n_zstd=$(grep '^zstd' "$DIGESTS" | awk '{print $3}' | sort -u | wc -l)
if [[ $n_gzip == 1 && $n_zstd == 1 ]]; then
  echo "identical digests for any thread count: yes"
else
  echo "identical digests for any thread count: NO"; exit 1
fi
