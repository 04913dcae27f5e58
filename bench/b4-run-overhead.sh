#!/usr/bin/env bash
# B4: per-RUN-step overhead — forge vs BuildKit (Debian's dockerd) vs
# `buildah build --layers --isolation chroot`.
#
# per-step overhead = (wall of a cold build of FROM + 20 trivial RUNs + ENV
#                      - wall of a cold build of FROM + ENV) / 20
# computed per round (the two builds run back to back) and the median taken. Each
# RUN is `RUN echo N > /fN`, so each step makes a one-file layer. Cold = empty store
# for every build (fresh FORGE_HOME, `docker builder prune -af` + rmi, fresh
# buildah --root); the busybox base (scripts/make-rootfs) is imported into each
# store before timing. Peer figure in BENCHMARKS.md: buildah ~0.24 s per RUN. forge
# target: <= 50 ms per step.
#
# Outputs checked: the 20-RUN image's layers (path, mode, owner, size, content of
# every entry) are equal across tools.
#
# The row's second half: two independent stages, each one CPU-bound RUN (a
# busybox sh loop of B4_LOOP iterations, ~2.5 s), and a final stage that COPYs
# --from both. parallel = wall of the cold build of the whole file (forge
# --jobs 2, BuildKit as it is, buildah --jobs 2); serial sum = wall of the cold
# build of `--target a` + that of `--target b`. Ratio = parallel / serial sum,
# per round, median; target <= 0.6x on 2 cores. Outputs checked: /a and /b of
# the final image equal across tools.
#
# Environment:
#   B4_REPS=7 (B4_QUICK=1: 2)   B4_STEPS=20   B4_DIR=/tmp/forge-b4
#   B4_STAGES=0                 skip the second half; B4_FIRST=0 skip the first
#   B4_LOOP=2500000             iterations of each stage's loop
#   B4_STAGE_REPS=5             rounds of the second half
#   BENCH_NO_FORGE=1            peers only
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$BENCH_REPO"

if [[ "${B4_QUICK:-}" == 1 ]]; then REPS=${B4_REPS:-2}; else REPS=${B4_REPS:-7}; fi
STEPS=${B4_STEPS:-20}
WORK=${B4_DIR:-/tmp/forge-b4}
rm -rf "$WORK"
bench_init "$WORK"
BENCH_CLEAN_DIRS+=("$WORK")

# ---- fixtures ---------------------------------------------------------------------
scripts/make-rootfs "$WORK/rootfs.tar"
mkdir -p "$WORK/ctx0" "$WORK/ctxN"
printf 'FROM b4-base\nENV B4=1\n' >"$WORK/ctx0/Dockerfile"
{
  echo "FROM b4-base"
  for ((n = 1; n <= STEPS; n++)); do echo "RUN echo $n > /f$n"; done
  echo "ENV B4=1"
} >"$WORK/ctxN/Dockerfile"
echo "B4: FROM + $STEPS x RUN + ENV vs FROM + ENV, cold store for every build; $REPS reps"

# ---- peers ------------------------------------------------------------------------
forge_probe "$WORK"
HAVE_DOCKER=0
if have_peer BuildKit /usr/sbin/dockerd && have_peer BuildKit "$DOCKER"; then
  dockerd_start "$WORK/dockerd"
  dk import "$WORK/rootfs.tar" b4-base:latest >/dev/null
  HAVE_DOCKER=1
fi
HAVE_BUILDAH=0
if have_peer buildah buildah; then HAVE_BUILDAH=1; fi

FH=$WORK/forge-home
BR=$WORK/buildah
forge_b() { # CTX: cold forge build
  rm -rf "$FH"; mkdir -p "$FH"
  FORGE_HOME=$FH "$FORGE" import "$WORK/rootfs.tar" b4-base:latest >/dev/null
  timed "forge $(basename "$1")" env FORGE_HOME="$FH" "$FORGE" build --network none --progress plain -t b4-out -f "$1/Dockerfile" "$1"
}
docker_b() {
  docker_cold b4-out
  timed "BuildKit $(basename "$1")" dk build --network none -q -t b4-out -f "$1/Dockerfile" "$1"
}
buildah_b() {
  buildah_fresh "$BR"
  buildah_import "$BR" "$WORK/rootfs.tar" b4-base
  timed "buildah $(basename "$1")" bh "$BR" build --layers --isolation chroot -q -t b4-out -f "$1/Dockerfile" "$1"
}

TOOLS=()
[[ $HAVE_FORGE == 1 ]] && TOOLS+=(forge)
[[ $HAVE_DOCKER == 1 ]] && TOOLS+=(BuildKit)
[[ $HAVE_BUILDAH == 1 ]] && TOOLS+=(buildah)
fn_of() { case $1 in forge) echo forge_b ;; BuildKit) echo docker_b ;; buildah) echo buildah_b ;; esac; }

if [[ "${B4_FIRST:-1}" == 0 ]]; then REPS=-1; fi
for ((i = 0; i <= REPS; i++)); do # round 0 warms up and is not counted
  if [[ $i == 0 ]]; then echo "round 0 (warm-up, not counted)"; BENCH_WARMUP=1; else echo "round $i/$REPS"; BENCH_WARMUP=0; fi
  for tool in "${TOOLS[@]}"; do
    f=$(fn_of "$tool")
    "$f" "$WORK/ctx0"
    "$f" "$WORK/ctxN"
    if [[ $i -gt 0 ]]; then
      t0=$(awk '{print $NF}' <<<"${RESULTS["$tool ctx0"]}")
      tn=$(awk '{print $NF}' <<<"${RESULTS["$tool ctxN"]}")
      record "$tool per-step" "$(awk -v a="$tn" -v b="$t0" -v n="$STEPS" 'BEGIN{printf "%.4f", (a-b)/n}')"
    fi
  done
done

if [[ "${B4_FIRST:-1}" != 0 ]]; then
# ---- outputs must be equal (the 20-RUN image of the last round) ---------------------
LISTS=()
if [[ $HAVE_DOCKER == 1 ]]; then dk save b4-out -o "$WORK/docker.tar"; layer_list "$WORK/docker.tar" all >"$WORK/BuildKit.list"; LISTS+=("$WORK/BuildKit.list"); fi
if [[ $HAVE_FORGE == 1 ]]; then FORGE_HOME=$FH "$FORGE" save --format docker b4-out -o "$WORK/forge.tar"; layer_list "$WORK/forge.tar" all >"$WORK/forge.list"; LISTS+=("$WORK/forge.list"); fi
if [[ $HAVE_BUILDAH == 1 ]]; then bh "$BR" push -q b4-out "docker-archive:$WORK/buildah.tar:b4-out:latest"; layer_list "$WORK/buildah.tar" all >"$WORK/buildah.list"; LISTS+=("$WORK/buildah.list"); fi
if ((${#LISTS[@]} >= 2)); then
  same_outputs "$STEPS-RUN image, all layers" "${LISTS[@]}"
else
  echo "outputs: fewer than two tools ran, nothing to compare"
fi
nf=$(grep -c ' f[0-9]* 644 0:0 f ' "${LISTS[0]}" || true)
[[ $nf == "$STEPS" ]] || { echo "expected $STEPS files /fN in the image, found $nf"; exit 1; }

dump_samples

# ---- table -------------------------------------------------------------------------
ms() { awk -v s="$1" 'BEGIN{ if (s=="-") print "-"; else printf "%.1f", s*1000 }'; }
echo
echo "B4 — per-RUN-step overhead, ms (medians of $REPS; cold store every build)"
printf '%-12s %10s %10s %14s %5s %12s  %s\n' tool "FROM+ENV" "+${STEPS} RUN" "per step (ms)" runs "vs BuildKit" target
BK=$(med "BuildKit per-step")
for tool in "${TOOLS[@]}"; do
  p=$(med "$tool per-step")
  target=""; [[ $tool == forge ]] && target="<= 50 ms"
  printf '%-12s %10s %10s %14s %5s %12s  %s\n' "$tool" "$(ms "$(med "$tool ctx0")")" "$(ms "$(med "$tool ctxN")")" \
    "$(ms "$p")" "$(runs "$tool per-step")" "$(ratio "$p" "$BK")" "$target"
done
if [[ $HAVE_FORGE == 1 ]]; then
  awk -v p="$(med "forge per-step")" 'BEGIN{ printf "target: forge %.1f ms per step — %s\n", p*1000, (p <= 0.050 ? "met" : "MISSED") }'
fi
fi

# ---- second half: two independent stages ------------------------------------------
if [[ "${B4_STAGES:-1}" == 0 ]]; then
  echo; echo "B4 second half skipped (B4_STAGES=0)"; exit 0
fi
LOOP=${B4_LOOP:-2500000}
mkdir -p "$WORK/ctxP"
cat >"$WORK/ctxP/Dockerfile" <<EOF
FROM b4-base AS a
RUN i=0; while [ \$i -lt $LOOP ]; do i=\$((i+1)); done; echo a \$i > /a
FROM b4-base AS b
RUN i=0; while [ \$i -lt $LOOP ]; do i=\$((i+1)); done; echo b \$i > /b
FROM b4-base
COPY --from=a /a /a
COPY --from=b /b /b
EOF
fp() { # TARGET|all: cold forge build
  rm -rf "$FH"; mkdir -p "$FH"
  FORGE_HOME=$FH "$FORGE" import "$WORK/rootfs.tar" b4-base:latest >/dev/null
  local t=(); [[ $1 != all ]] && t=(--target "$1")
  timed "forge stages $1" env FORGE_HOME="$FH" "$FORGE" build --jobs 2 --network none --progress plain "${t[@]}" -t b4-par -f "$WORK/ctxP/Dockerfile" "$WORK/ctxP"
}
dp() {
  docker_cold b4-par
  local t=(); [[ $1 != all ]] && t=(--target "$1")
  timed "BuildKit stages $1" dk build --network none -q "${t[@]}" -t b4-par -f "$WORK/ctxP/Dockerfile" "$WORK/ctxP"
}
bp() {
  buildah_fresh "$BR"
  buildah_import "$BR" "$WORK/rootfs.tar" b4-base
  local t=(); [[ $1 != all ]] && t=(--target "$1")
  timed "buildah stages $1" bh "$BR" build --layers --isolation chroot --jobs 2 -q "${t[@]}" -t b4-par -f "$WORK/ctxP/Dockerfile" "$WORK/ctxP"
}
fnp_of() { case $1 in forge) echo fp ;; BuildKit) echo dp ;; buildah) echo bp ;; esac; }
SREPS=${B4_STAGE_REPS:-5}
echo
echo "B4 second half: two stages of $LOOP-iteration loops; $SREPS reps"
for ((i = 0; i <= SREPS; i++)); do
  if [[ $i == 0 ]]; then echo "round 0 (warm-up, not counted)"; BENCH_WARMUP=1; else echo "round $i/$SREPS"; BENCH_WARMUP=0; fi
  for tool in "${TOOLS[@]}"; do
    f=$(fnp_of "$tool")
    "$f" a; "$f" b; "$f" all
    if [[ $i -gt 0 ]]; then
      ta=$(awk '{print $NF}' <<<"${RESULTS["$tool stages a"]}")
      tb=$(awk '{print $NF}' <<<"${RESULTS["$tool stages b"]}")
      tp=$(awk '{print $NF}' <<<"${RESULTS["$tool stages all"]}")
      record "$tool serial sum" "$(awk -v a="$ta" -v b="$tb" 'BEGIN{printf "%.4f", a+b}')"
      record "$tool stage ratio" "$(awk -v a="$ta" -v b="$tb" -v p="$tp" 'BEGIN{printf "%.4f", p/(a+b)}')"
    fi
  done
done
CONTENT=()
for tool in "${TOOLS[@]}"; do
  case $tool in
    forge) FORGE_HOME=$FH "$FORGE" save --format docker b4-par -o "$WORK/par-forge.tar" ;;
    BuildKit) dk save b4-par -o "$WORK/par-BuildKit.tar" ;;
    buildah) bh "$BR" push -q b4-par "docker-archive:$WORK/par-buildah.tar:b4-par:latest" ;;
  esac
  layer_list "$WORK/par-$tool.tar" all | grep -E '^L[0-9]+ (a|b) ' | cut -d' ' -f2- >"$WORK/par-$tool.list"
  CONTENT+=("$WORK/par-$tool.list")
done
if ((${#CONTENT[@]} >= 2)); then same_outputs "two-stage image, /a and /b" "${CONTENT[@]}"; fi
[[ $(wc -l <"${CONTENT[0]}") == 2 ]] || { echo "expected /a and /b in the two-stage image"; cat "${CONTENT[0]}"; exit 1; }
dump_samples
echo
echo "B4 second half — two independent CPU-bound stages: wall of the whole build vs serial sum (medians of $SREPS)"
printf '%-12s %12s %12s %12s  %s\n' tool "serial sum" "parallel" "ratio" target
for tool in "${TOOLS[@]}"; do
  target=""; [[ $tool == forge ]] && target="<= 0.6x"
  printf '%-12s %12s %12s %12s  %s\n' "$tool" "$(med "$tool serial sum")" "$(med "$tool stages all")" "$(med "$tool stage ratio")x" "$target"
done
if [[ $HAVE_FORGE == 1 ]]; then
  awk -v r="$(med "forge stage ratio")" 'BEGIN{ printf "target: forge %.2fx of the serial sum — %s\n", r, (r <= 0.6 ? "met" : "MISSED") }'
fi
