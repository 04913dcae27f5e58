#!/usr/bin/env bash
# B9: working containers — forge vs `buildah --isolation chroot` vs Debian's dockerd
# (`docker run`/`start`/`commit`). Three measures, each the median over rounds:
#
#   run --rm   make a container of the busybox image, run `true` in it, remove it:
#              forge run --rm --network none b9-base true
#              buildah from + run --isolation chroot C true + rm (one function,
#                timed as a whole; buildah has no --network none with chroot, see bhr)
#              docker run --rm --network none b9-base true
#   run in C   run `true` in a container that exists already (made once per round,
#              not timed): forge run C true; buildah run --isolation chroot C true;
#              docker start -a C (C made by `docker create --network none b9-base true`)
#   commit     a fresh container (per round, per tool, not timed) in which a command
#              wrote B9_FILES small files under /d and deleted /bin/vi; only the commit
#              is timed: forge commit C b9-out, buildah commit -q C b9-out, docker
#              commit C b9-out (the previous round's b9-out is removed first, untimed).
#
# Rounds go A B A B (forge, buildah, docker for each measure in turn); round 0 warms
# up and is not counted. Every tool has its own store (FORGE_HOME, buildah
# --root/--runroot, dockerd --data-root), all under B9_DIR; the busybox rootfs
# (scripts/make-rootfs) is imported into each once, before round 0. All runs use
# --network none (buildah: see bhr below). Containers are removed at the end of every
# round (and the counts checked), so the stores do not grow.
#
# Outputs checked: the last round's b9-out of each tool is saved as a docker-archive
# (forge save --format docker, buildah push docker-archive:, docker save) and the top
# layer's listing (path, mode, owner, size, content hash; lib.sh's layer_list) must be
# equal across tools: B9_FILES files under /d and the whiteout of /bin/vi. Nothing is
# filtered beyond what layer_list always leaves out: directories, and the empty
# /etc/hosts, /etc/hostname, /etc/resolv.conf and /run stubs that buildah's chroot run
# leaves in its layer (docker and forge have none). Timestamps are not compared
# (forge clamps them to SOURCE_DATE_EPOCH, 0 by default; the peers keep the run's).
#
# Environment:
#   B9_REPS=7 (B9_QUICK=1: 2)   B9_FILES=2000   B9_DIR=/tmp/forge-b9
#   BENCH_NO_FORGE=1            peers only
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$BENCH_REPO"

if [[ "${B9_QUICK:-}" == 1 ]]; then REPS=${B9_REPS:-2}; else REPS=${B9_REPS:-7}; fi
NFILES=${B9_FILES:-2000}
WORK=${B9_DIR:-/tmp/forge-b9}
rm -rf "$WORK"
bench_init "$WORK"
BENCH_CLEAN_DIRS+=("$WORK")

# ---- fixtures ---------------------------------------------------------------------
scripts/make-rootfs "$WORK/rootfs.tar"
WRITE="mkdir -p /d && i=0; while [ \$i -lt $NFILES ]; do echo \$i > /d/\$i; i=\$((i+1)); done; rm /bin/vi"
echo "B9: working containers (busybox image): run --rm, run in an existing container, commit of $NFILES new files + 1 deletion; $REPS reps"

# ---- peers ------------------------------------------------------------------------
FH=$WORK/forge-home
BR=$WORK/buildah
forge_probe "$WORK"
if [[ $HAVE_FORGE == 1 ]]; then
  mkdir -p "$FH"
  FORGE_HOME=$FH "$FORGE" import "$WORK/rootfs.tar" b9-base:latest >/dev/null
fi
HAVE_DOCKER=0
if have_peer docker /usr/sbin/dockerd && have_peer docker "$DOCKER"; then
  dockerd_start "$WORK/dockerd"
  dk import "$WORK/rootfs.tar" b9-base:latest >/dev/null
  HAVE_DOCKER=1
fi
HAVE_BUILDAH=0
if have_peer buildah buildah; then
  buildah_fresh "$BR"
  buildah_import "$BR" "$WORK/rootfs.tar" b9-base
  HAVE_BUILDAH=1
fi

TOOLS=()
[[ $HAVE_FORGE == 1 ]] && TOOLS+=(forge)
[[ $HAVE_BUILDAH == 1 ]] && TOOLS+=(buildah)
[[ $HAVE_DOCKER == 1 ]] && TOOLS+=(docker)
((${#TOOLS[@]} > 0)) || { echo "B9: no tool to run"; exit 0; }

fg() { FORGE_HOME=$FH "$FORGE" "$@"; }
# buildah refuses --network none with --isolation chroot ("cannot set --network other
# than host"): a chroot run has no network namespace at all, so it runs without the flag
# (no namespace to set up: if anything, this favours buildah).
bhr() { bh "$BR" run --isolation chroot "$@"; }
buildah_run_rm() { # from + run + rm, timed as one (set -e is off inside `timed`'s `if`)
  local c
  c=$(bh "$BR" from -q b9-base) && bhr "$c" true && bh "$BR" rm "$c"
}

# run --rm
m_runrm() { # TOOL
  case $1 in
    forge) timed "forge run-rm" fg run --rm --network none b9-base true ;;
    buildah) timed "buildah run-rm" buildah_run_rm ;;
    docker) timed "docker run-rm" dk run --rm --network none b9-base true ;;
  esac
}
# run in an existing container (made here, untimed)
m_runc() { # TOOL
  case $1 in
    forge) fg from --name b9-c b9-base >/dev/null
      timed "forge run-c" fg run --network none b9-c true ;;
    buildah) bh "$BR" from -q --name b9-c b9-base >/dev/null
      timed "buildah run-c" bhr b9-c true ;;
    docker) dk create --name b9-c --network none b9-base true >/dev/null
      timed "docker run-c" dk start -a b9-c ;;
  esac
}
# commit of a container that wrote NFILES files (writing untimed)
m_commit() { # TOOL
  case $1 in
    forge) fg rmi b9-out >/dev/null 2>&1 || true
      fg run --name b9-w --network none b9-base sh -c "$WRITE"
      timed "forge commit" fg commit b9-w b9-out ;;
    buildah) bh "$BR" rmi b9-out >/dev/null 2>&1 || true
      bh "$BR" from -q --name b9-w b9-base >/dev/null
      bhr b9-w sh -c "$WRITE"
      timed "buildah commit" bh "$BR" commit -q b9-w b9-out ;;
    docker) dk rmi b9-out >/dev/null 2>&1 || true
      dk run --name b9-w --network none b9-base sh -c "$WRITE"
      timed "docker commit" dk commit b9-w b9-out ;;
  esac
}
# remove every container of the tool's store; the count must then be 0
clean_containers() { # TOOL
  local ids n
  case $1 in
    forge) ids=$(fg containers -a -q); [[ -z "$ids" ]] || fg rm $ids >/dev/null
      n=$(fg containers -a -q | grep -c . || true) ;;
    buildah) bh "$BR" rm -a >/dev/null
      n=$(bh "$BR" containers -a -q | grep -c . || true) ;;
    docker) ids=$(dk ps -a -q); [[ -z "$ids" ]] || dk rm -f $ids >/dev/null
      n=$(dk ps -a -q | grep -c . || true) ;;
  esac
  [[ $n == 0 ]] || { echo "$1: $n containers left after clean-up"; exit 1; }
}

MEASURES=(run-rm run-c commit)
fn_of() { case $1 in run-rm) echo m_runrm ;; run-c) echo m_runc ;; commit) echo m_commit ;; esac; }

for ((i = 0; i <= REPS; i++)); do # round 0 warms up and is not counted
  if [[ $i == 0 ]]; then echo "round 0 (warm-up, not counted)"; BENCH_WARMUP=1; else echo "round $i/$REPS"; BENCH_WARMUP=0; fi
  for m in "${MEASURES[@]}"; do
    f=$(fn_of "$m")
    for tool in "${TOOLS[@]}"; do "$f" "$tool"; done
  done
  for tool in "${TOOLS[@]}"; do clean_containers "$tool"; done
done

# ---- outputs must be equal (the last round's b9-out, top layer) --------------------
LISTS=()
for tool in "${TOOLS[@]}"; do
  case $tool in
    forge) fg save --format docker -o "$WORK/out-forge.tar" b9-out ;;
    buildah) bh "$BR" push -q b9-out "docker-archive:$WORK/out-buildah.tar:b9-out:latest" ;;
    docker) dk save -o "$WORK/out-docker.tar" b9-out ;;
  esac
  layer_list "$WORK/out-$tool.tar" -1 >"$WORK/$tool.list"
  LISTS+=("$WORK/$tool.list")
  nf=$(grep -c '^L0 d/[0-9]* 644 0:0 f ' "$WORK/$tool.list" || true)
  [[ $nf == "$NFILES" ]] || { echo "$tool: expected $NFILES files /d/N in the committed layer, found $nf"; exit 1; }
  grep -qx 'L0 bin/.wh.vi whiteout' "$WORK/$tool.list" || { echo "$tool: no whiteout for /bin/vi in the committed layer"; exit 1; }
done
if ((${#LISTS[@]} >= 2)); then
  same_outputs "committed layer" "${LISTS[@]}"
else
  echo "outputs: fewer than two tools ran, nothing to compare"
fi

dump_samples

# ---- table -------------------------------------------------------------------------
ms() { awk -v s="$1" 'BEGIN{ if (s=="-") print "-"; else printf "%.1f", s*1000 }'; }
mt() { [[ " ${TOOLS[*]} " == *" $2 "* ]] && med "$2 $1" || echo -; } # MEASURE TOOL
echo
echo "B9 — working containers, ms (medians of $REPS; forge's ratio to each peer)"
printf '%-34s %9s %9s %9s %5s %14s %14s\n' measure forge buildah docker runs "forge/buildah" "forge/docker"
label() { case $1 in run-rm) echo "run --rm (create+true+rm)" ;; run-c) echo "run true in existing container" ;; commit) echo "commit ($NFILES files + 1 whiteout)" ;; esac; }
for m in "${MEASURES[@]}"; do
  fo=$(mt "$m" forge); bu=$(mt "$m" buildah); dc=$(mt "$m" docker)
  printf '%-34s %9s %9s %9s %5s %14s %14s\n' "$(label "$m")" "$(ms "$fo")" "$(ms "$bu")" "$(ms "$dc")" "$(runs "${TOOLS[0]} $m")" \
    "$(ratio "$fo" "$bu")" "$(ratio "$fo" "$dc")"
done
