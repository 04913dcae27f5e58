#!/usr/bin/env bash
# B1: small busybox build — cold and no-op wall time, forge vs BuildKit (Debian's
# dockerd) vs `buildah build --layers --isolation chroot`.
#
# Row workload: FROM + ADD rootfs + RUN + COPY + ENV + CMD. Peer figures in
# BENCHMARKS.md: BuildKit 0.23 / 0.08 s, buildah 0.65 / 0.30 s. forge targets: cold
# <= 1.0x BuildKit, no-op <= 0.5x BuildKit.
#
# Until forge has COPY/ADD, the default Dockerfile is FROM <busybox base imported
# into each tool beforehand, not timed> + RUN + ENV + CMD. B1_FULL=1 switches to the
# row's full Dockerfile (DOCKERFILE_FULL below: FROM scratch + ADD rootfs.tar / + RUN
# + COPY + ENV + CMD).
#
# cold  = empty store: fresh FORGE_HOME, `docker builder prune -af` + rmi of the
#         output, fresh buildah --root; the base is imported before timing.
# no-op = the same build again right after.
# Runs A B A B ... and prints medians. Outputs checked: every layer's file list
# (path, mode, owner, size, content hash) from `forge save --format docker`,
# `docker save` and `buildah push docker-archive:` must be equal, and the config's
# Env and Cmd.
#
# Environment:
#   B1_REPS=7          repetitions (B1_QUICK=1: 2)
#   B1_FULL=1          the full-row Dockerfile (needs forge COPY/ADD)
#   B1_DIR=/tmp/forge-b1   work dir (removed at exit unless BENCH_KEEP=1)
#   BENCH_NO_FORGE=1   peers only
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$BENCH_REPO"

if [[ "${B1_QUICK:-}" == 1 ]]; then REPS=${B1_REPS:-2}; else REPS=${B1_REPS:-7}; fi
WORK=${B1_DIR:-/tmp/forge-b1}
rm -rf "$WORK"
bench_init "$WORK"
BENCH_CLEAN_DIRS+=("$WORK")

# ---- the Dockerfiles -------------------------------------------------------------
RUN_STEP='RUN mkdir -p /app/data && echo hello > /app/greeting && seq 1 500 > /app/data/numbers && ln -s greeting /app/link && chmod 0600 /app/data/numbers && rm /etc/group'
DOCKERFILE_NOW="FROM b1-base
$RUN_STEP
ENV GREETING=hello B1=1
CMD [\"/bin/sh\", \"-c\", \"cat /app/greeting\"]
"
# >>> B1 full row: switch with B1_FULL=1 once forge has COPY/ADD. <<<
DOCKERFILE_FULL="FROM scratch
ADD rootfs.tar /
$RUN_STEP
COPY app.conf /app/app.conf
ENV GREETING=hello B1=1
CMD [\"/bin/sh\", \"-c\", \"cat /app/greeting\"]
"
if [[ "${B1_FULL:-}" == 1 ]]; then
  DOCKERFILE=$DOCKERFILE_FULL; MODE="full row (FROM scratch + ADD + RUN + COPY + ENV + CMD)"
else
  DOCKERFILE=$DOCKERFILE_NOW; MODE="FROM imported base + RUN + ENV + CMD (B1_FULL=1: full row)"
fi

# ---- fixtures ---------------------------------------------------------------------
CTX=$WORK/ctx
mkdir -p "$CTX"
scripts/make-rootfs "$WORK/rootfs.tar"
if [[ "${B1_FULL:-}" == 1 ]]; then # the context holds only what the Dockerfile uses
  cp "$WORK/rootfs.tar" "$CTX/rootfs.tar"
  seq 1 200 | sed 's/^/key_/; s/$/ = value/' >"$CTX/app.conf"
  touch -d @0 "$CTX/app.conf"
fi
printf '%s' "$DOCKERFILE" >"$CTX/Dockerfile"
printf '%s\n' Dockerfile >"$CTX/.dockerignore"
echo "B1: $MODE; $REPS reps; rootfs $(wc -c <"$WORK/rootfs.tar") bytes"

# ---- peers ------------------------------------------------------------------------
forge_probe "$WORK"
HAVE_DOCKER=0
if have_peer BuildKit /usr/sbin/dockerd && have_peer BuildKit "$DOCKER"; then
  dockerd_start "$WORK/dockerd"
  dk import "$WORK/rootfs.tar" b1-base:latest >/dev/null
  HAVE_DOCKER=1
fi
HAVE_BUILDAH=0
if have_peer buildah buildah; then HAVE_BUILDAH=1; fi

FH=$WORK/forge-home
BR=$WORK/buildah
forge_cold_prep() { rm -rf "$FH"; mkdir -p "$FH"; [[ "${B1_FULL:-}" == 1 ]] || FORGE_HOME=$FH "$FORGE" import "$WORK/rootfs.tar" b1-base:latest >/dev/null; }
forge_build() { FORGE_HOME=$FH "$FORGE" build --network none --progress plain -t b1-out -f "$CTX/Dockerfile" "$CTX"; }
docker_build() { dk build --network none -q -t b1-out -f "$CTX/Dockerfile" "$CTX"; }
buildah_cold_prep() { buildah_fresh "$BR"; [[ "${B1_FULL:-}" == 1 ]] || buildah_import "$BR" "$WORK/rootfs.tar" b1-base; }
buildah_build() { bh "$BR" build --layers --isolation chroot -q -t b1-out -f "$CTX/Dockerfile" "$CTX"; }

for ((i = 0; i <= REPS; i++)); do # round 0 warms up (dockerd's first builds are slow) and is not counted
  if [[ $i == 0 ]]; then echo "round 0 (warm-up, not counted)"; BENCH_WARMUP=1; else echo "round $i/$REPS"; BENCH_WARMUP=0; fi
  if [[ $HAVE_FORGE == 1 ]]; then
    forge_cold_prep
    timed "forge cold" forge_build
    timed "forge no-op" forge_build
    if [[ $i == 0 ]] && ! grep -q CACHED "$BENCH_LOG"; then
      echo "forge: the no-op build printed no CACHED step:"; cat "$BENCH_LOG"; exit 1
    fi
  fi
  if [[ $HAVE_DOCKER == 1 ]]; then
    docker_cold b1-out
    timed "BuildKit cold" docker_build
    timed "BuildKit no-op" docker_build
  fi
  if [[ $HAVE_BUILDAH == 1 ]]; then
    buildah_cold_prep
    timed "buildah cold" buildah_build
    timed "buildah no-op" buildah_build
  fi
done

# ---- outputs must be equal ------------------------------------------------------------
LISTS=() CONFIGS=()
save_check() { # NAME ARCHIVE
  layer_list "$2" all >"$WORK/$1.list"
  image_config "$2" >"$WORK/$1.config"
  LISTS+=("$WORK/$1.list"); CONFIGS+=("$WORK/$1.config")
}
if [[ $HAVE_DOCKER == 1 ]]; then dk save b1-out -o "$WORK/docker.tar"; save_check BuildKit "$WORK/docker.tar"; fi
if [[ $HAVE_FORGE == 1 ]]; then FORGE_HOME=$FH "$FORGE" save --format docker b1-out -o "$WORK/forge.tar"; save_check forge "$WORK/forge.tar"; fi
if [[ $HAVE_BUILDAH == 1 ]]; then bh "$BR" push -q b1-out "docker-archive:$WORK/buildah.tar:b1-out:latest"; save_check buildah "$WORK/buildah.tar"; fi
if ((${#LISTS[@]} >= 2)); then
  same_outputs "all layers: path, mode, owner, size, content" "${LISTS[@]}"
  same_outputs "config Env and Cmd" "${CONFIGS[@]}"
else
  echo "outputs: fewer than two tools ran, nothing to compare"
fi

dump_samples

# ---- table -------------------------------------------------------------------------
echo
echo "B1 — $MODE — seconds, medians of $REPS"
print_header
BK_COLD=$(med "BuildKit cold"); BK_NOOP=$(med "BuildKit no-op")
for tool in forge BuildKit buildah; do
  [[ -n "${RESULTS["$tool cold"]:-}" ]] || continue
  tc=""; tn=""
  if [[ $tool == forge ]]; then tc="<= 1.0x BuildKit"; tn="<= 0.5x BuildKit"; fi
  print_row "$tool cold" "$(med "$tool cold")" "$(runs "$tool cold")" "$BK_COLD" "$tc"
  print_row "$tool no-op" "$(med "$tool no-op")" "$(runs "$tool no-op")" "$BK_NOOP" "$tn"
done
if [[ $HAVE_FORGE == 1 && -n "$BK_COLD" && "$BK_COLD" != - ]]; then
  awk -v c="$(med "forge cold")" -v n="$(med "forge no-op")" -v bc="$BK_COLD" -v bn="$BK_NOOP" 'BEGIN{
    printf "targets: cold %s (%.2fx <= 1.0x), no-op %s (%.2fx <= 0.5x)\n", (c/bc<=1.0?"met":"MISSED"), c/bc, (n/bn<=0.5?"met":"MISSED"), n/bn }'
fi
