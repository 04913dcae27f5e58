#!/usr/bin/env bash
# B2: Debian minbase build — a 121 MB rootfs ADDed onto scratch, then a small RUN;
# cold and no-op wall time, forge vs BuildKit (Debian's dockerd) vs
# `buildah build --layers --isolation chroot`.
#
# Dockerfile:  FROM scratch / ADD rootfs.tar / / RUN echo ok > /ok
# rootfs.tar:  `debootstrap --variant=minbase bookworm` from the mirror in
#              /etc/apt/sources.list.d/debian.sources, without .debs, apt lists and
#              device nodes, packed with tar --sort=name --mtime=@0 --numeric-owner
#              (lib.sh debian_minbase_tar; made once, ~30 s, cached in
#              /tmp/forge-bench-fixtures). ~6,700 entries, 121 MB.
# Peer figures in BENCHMARKS.md: BuildKit 2.31 / 0.07 s, buildah 3.9 / 1.65 s.
# forge targets (as B1): cold <= 1.0x BuildKit, no-op <= 0.5x BuildKit.
#
# cold  = empty store: fresh FORGE_HOME, `docker builder prune -af` + rmi of the
#         output, fresh buildah --root (nothing to import: FROM scratch).
# no-op = the same build again right after.
# Runs A B A B ... (round 0 is a warm-up, not counted) and prints medians. Outputs
# checked: every layer's file list (path, mode, owner, type, size, content hash)
# from `forge save --format docker`, `docker save` and `buildah push
# docker-archive:` must be equal, and /ok must hold "ok".
#
# forge is skipped (with the reason) while `forge build` cannot run ADD of a local
# tar (lib.sh forge_probe_copy ... add).
#
# Environment:
#   B2_REPS=7          repetitions (B2_QUICK=1: 2)
#   B2_DIR=/tmp/forge-b2   work dir (removed at exit unless BENCH_KEEP=1)
#   BENCH_FIXTURES=/tmp/forge-bench-fixtures   where the debootstrap tar is cached
#   BENCH_NO_FORGE=1   peers only
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$BENCH_REPO"

if [[ "${B2_QUICK:-}" == 1 ]]; then REPS=${B2_REPS:-2}; else REPS=${B2_REPS:-7}; fi
WORK=${B2_DIR:-/tmp/forge-b2}
rm -rf "$WORK"
bench_init "$WORK"
BENCH_CLEAN_DIRS+=("$WORK")

# ---- fixtures ---------------------------------------------------------------------
CTX=$WORK/ctx
mkdir -p "$CTX"
debian_minbase_tar "$CTX/rootfs.tar"
printf 'FROM scratch\nADD rootfs.tar /\nRUN echo ok > /ok\n' >"$CTX/Dockerfile"
printf '%s\n' Dockerfile >"$CTX/.dockerignore"
echo "B2: FROM scratch + ADD rootfs.tar / (debian bookworm minbase, $(wc -c <"$CTX/rootfs.tar") bytes, $(tar -tf "$CTX/rootfs.tar" | wc -l) entries) + RUN echo ok > /ok; $REPS reps"

# ---- peers ------------------------------------------------------------------------
forge_probe_copy "$WORK" add
[[ $HAVE_FORGE == 1 ]] && echo "forge: $FORGE (ADD of a local tar + RUN probe passed)"
FORGE_NOOP_UNCACHED=0
HAVE_DOCKER=0
if have_peer BuildKit /usr/sbin/dockerd && have_peer BuildKit "$DOCKER"; then
  dockerd_start "$WORK/dockerd"
  HAVE_DOCKER=1
fi
HAVE_BUILDAH=0
if have_peer buildah buildah; then HAVE_BUILDAH=1; fi

FH=$WORK/forge-home
BR=$WORK/buildah
forge_build() { FORGE_HOME=$FH "$FORGE" build --network none --progress plain -t b2-out -f "$CTX/Dockerfile" "$CTX"; }
docker_build() { dk build --network none -q -t b2-out -f "$CTX/Dockerfile" "$CTX"; }
buildah_build() { bh "$BR" build --layers --isolation chroot -q -t b2-out -f "$CTX/Dockerfile" "$CTX"; }

for ((i = 0; i <= REPS; i++)); do # round 0 warms up (dockerd's first builds are slow) and is not counted
  if [[ $i == 0 ]]; then echo "round 0 (warm-up, not counted)"; BENCH_WARMUP=1; else echo "round $i/$REPS"; BENCH_WARMUP=0; fi
  if [[ $HAVE_FORGE == 1 ]]; then
    rm -rf "$FH"; mkdir -p "$FH"
    timed "forge cold" forge_build
    timed "forge no-op" forge_build
    if [[ $i == 0 ]] && ! grep -q CACHED "$BENCH_LOG"; then # measured anyway, flagged in the table
      FORGE_NOOP_UNCACHED=1
      echo "forge: WARNING — the no-op build printed no CACHED step (it rebuilt):"; sed 's/^/  /' "$BENCH_LOG"
    fi
  fi
  if [[ $HAVE_DOCKER == 1 ]]; then
    docker_cold b2-out
    timed "BuildKit cold" docker_build
    timed "BuildKit no-op" docker_build
  fi
  if [[ $HAVE_BUILDAH == 1 ]]; then
    buildah_fresh "$BR"
    timed "buildah cold" buildah_build
    timed "buildah no-op" buildah_build
  fi
done

# ---- outputs must be equal ------------------------------------------------------------
LISTS=()
save_check() { # NAME ARCHIVE
  layer_list "$2" all >"$WORK/$1.list"
  rm -f "$2"
  LISTS+=("$WORK/$1.list")
  grep -q '^L1 ok 644 0:0 f 3 ' "$WORK/$1.list" || { echo "$1: /ok (\"ok\\n\") missing from the RUN layer"; exit 1; }
}
if [[ $HAVE_DOCKER == 1 ]]; then dk save b2-out -o "$WORK/docker.tar"; save_check BuildKit "$WORK/docker.tar"; fi
if [[ $HAVE_FORGE == 1 ]]; then FORGE_HOME=$FH "$FORGE" save --format docker b2-out -o "$WORK/forge.tar"; save_check forge "$WORK/forge.tar"; fi
if [[ $HAVE_BUILDAH == 1 ]]; then bh "$BR" push -q b2-out "docker-archive:$WORK/buildah.tar:b2-out:latest"; save_check buildah "$WORK/buildah.tar"; fi
if ((${#LISTS[@]} >= 2)); then
  same_outputs "all layers: path, mode, owner, size, content" "${LISTS[@]}"
else
  echo "outputs: fewer than two tools ran, nothing to compare"
fi

dump_samples

# ---- table -------------------------------------------------------------------------
echo
echo "B2 — debian minbase: FROM scratch + ADD 121 MB rootfs + RUN — seconds, medians of $REPS"
print_header
BK_COLD=$(med "BuildKit cold"); BK_NOOP=$(med "BuildKit no-op")
for tool in forge BuildKit buildah; do
  [[ -n "${RESULTS["$tool cold"]:-}" ]] || continue
  tc=""; tn=""
  if [[ $tool == forge ]]; then tc="<= 1.0x BuildKit"; tn="<= 0.5x BuildKit"; fi
  if [[ $tool == forge && $FORGE_NOOP_UNCACHED == 1 ]]; then tn="$tn — NOT CACHED: the no-op rebuilt"; fi
  print_row "$tool cold" "$(med "$tool cold")" "$(runs "$tool cold")" "$BK_COLD" "$tc"
  print_row "$tool no-op" "$(med "$tool no-op")" "$(runs "$tool no-op")" "$BK_NOOP" "$tn"
done
if [[ $HAVE_FORGE == 1 && -n "$BK_COLD" && "$BK_COLD" != - ]]; then
  awk -v c="$(med "forge cold")" -v n="$(med "forge no-op")" -v bc="$BK_COLD" -v bn="$BK_NOOP" 'BEGIN{
    printf "targets: cold %s (%.2fx <= 1.0x), no-op %s (%.2fx <= 0.5x)\n", (c/bc<=1.0?"met":"MISSED"), c/bc, (n/bn<=0.5?"met":"MISSED"), n/bn }'
fi
