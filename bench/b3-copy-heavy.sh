#!/usr/bin/env bash
# B3: COPY-heavy build — `COPY . /app/` of a 20,000-file / ~100 MB context onto an
# imported busybox base; forge vs BuildKit (Debian's dockerd) vs
# `buildah build --layers --isolation chroot`, with `git status` on the same tree
# as the physical reference.
#
# Context (generated here, byte-identical every run, ~3 s): 80 directories
# mNN/pN/ of 250 files each, sizes log-normally distributed (0 B .. ~0.5 MB, total
# exactly B3_MB MB), seeded pseudo-random content, every 13th file 0755, fixed
# mtimes with nanoseconds. The Dockerfile lives outside the context:
#   FROM b3-base            (busybox rootfs from scripts/make-rootfs, imported into
#   COPY . /app/             each store before timing, not timed)
#
# Per tool and round (A B A B ..., round 0 a warm-up not counted: cold and no-op of
# forge and BuildKit only), the tree first reset to its generated state:
#   cold       empty store (fresh FORGE_HOME / `docker builder prune -af` + rmi /
#              fresh buildah --root; base imported, not timed)
#   no-op      the same build again
#   one change one file's content changed (a line appended: new size, new mtime)
#   same-size  another file's bytes inverted, same size, mtime restored to the
#              nanosecond (os.utime ns=): must rebuild
# `git status` (untracked scan included) on the same tree: a git repo of the context
# is made once (--git-dir outside the tree, everything committed), the index
# refreshed, one untimed run, then 3 timed runs per round (warm cache).
#
# Peer figures in BENCHMARKS.md: buildah 9.1 s / 3.6–20 s / 15.4 s. forge targets:
# cold / no-op / one change >= 6x / >= 30x / >= 20x faster than buildah; no-op
# <= 3x `git status`.
#
# Outputs checked: the COPY layer (path, mode, owner, type, size, content hash of
# every entry, from `forge save --format docker`, `docker save`, `buildah push
# docker-archive:`) of each tool's last build must equal the listing computed from
# the context in its final state (both changes applied), i.e. both changes really
# were rebuilt. A peer that keeps stale content is reported (and its time marked);
# forge doing so fails the run.
#
# forge is skipped (with the reason) while `forge build` cannot run COPY (lib.sh
# forge_probe_copy).
#
# Environment:
#   B3_REPS=5          repetitions (B3_QUICK=1: 2, and 2,000 files / 10 MB)
#   B3_FILES=20000  B3_MB=100   context size
#   B3_DIR=/tmp/forge-b3   work dir (removed at exit unless BENCH_KEEP=1)
#   BENCH_NO_FORGE=1   peers only
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$BENCH_REPO"

if [[ "${B3_QUICK:-}" == 1 ]]; then
  REPS=${B3_REPS:-2}; NFILES=${B3_FILES:-2000}; MB=${B3_MB:-10}
else
  REPS=${B3_REPS:-5}; NFILES=${B3_FILES:-20000}; MB=${B3_MB:-100}
fi
WORK=${B3_DIR:-/tmp/forge-b3}
rm -rf "$WORK"
bench_init "$WORK"
BENCH_CLEAN_DIRS+=("$WORK")

# ---- fixtures ---------------------------------------------------------------------
CTX=$WORK/ctx
GIT=(git --git-dir="$WORK/ctx.git" --work-tree="$CTX" -c core.fsmonitor=false)
# Prints the two files the changes touch: "ONE SAME" (relative paths).
gen_context() { # DIR NFILES BYTES
  "$PY" - "$@" <<'EOF'
import os, random, sys
root, n, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
PER_DIR = 250
rng = random.Random(20251123)
raw = [rng.lognormvariate(0.0, 1.3) for _ in range(n)]
scale = total / sum(raw)
sizes = [int(r * scale) for r in raw]
sizes[0] += total - sum(sizes)
ndirs = (n + PER_DIR - 1) // PER_DIR
def rel(i):
    d, j = divmod(i, PER_DIR)
    return "m%02d/p%d/file%03d.dat" % (d // 10, d % 10, j)
one = min(n - 1, (ndirs // 3) * PER_DIR + PER_DIR * 2 // 5)
same = min(n - 1, (2 * ndirs // 3) * PER_DIR + PER_DIR * 4 // 5)
if sizes[same] < 4096:  # a file big enough to invert; the largest one pays, so the total stays
    big = max(range(n), key=sizes.__getitem__)
    sizes[big] -= 4096 - sizes[same]; sizes[same] = 4096
dirs = set()
for i in range(n):
    p = os.path.join(root, rel(i))
    d = os.path.dirname(p)
    if d not in dirs:
        os.makedirs(d, exist_ok=True); dirs.add(d)
    with open(p, "wb") as f:
        f.write(rng.randbytes(sizes[i]))
    os.chmod(p, 0o755 if i % 13 == 0 else 0o644)
    ns = 1_700_000_000 * 10**9 + i * 1_000_003_001
    os.utime(p, ns=(ns, ns))
for d in sorted(dirs | {os.path.dirname(x) for x in dirs} | {root}, reverse=True):
    os.chmod(d, 0o755)
    os.utime(d, ns=(1_700_000_000 * 10**9,) * 2)
print(rel(one), rel(same))
EOF
}
# The expected COPY layer, in lib.sh layer_list's format, from the tree as it is.
expected_list() { # DIR
  "$PY" - "$1" <<'EOF'
import hashlib, os, stat, sys
root = sys.argv[1]; rows = []
for dp, dn, fn in os.walk(root):
    for f in fn:
        p = os.path.join(dp, f); st = os.lstat(p)
        rel = "app/" + os.path.relpath(p, root)
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256(open(p, "rb").read()).hexdigest()[:16]
            rows.append("L0 %s %o 0:0 f %d %s" % (rel, st.st_mode & 0o7777, st.st_size, h))
        elif stat.S_ISLNK(st.st_mode):
            rows.append("L0 %s %o 0:0 l -> %s" % (rel, st.st_mode & 0o7777, os.readlink(p)))
print("\n".join(sorted(rows)))
EOF
}
# The same-size same-mtime change: invert every byte, restore atime/mtime to the ns.
same_size_change() { # FILE
  "$PY" - "$1" <<'EOF'
import os, sys
p = sys.argv[1]; st = os.stat(p)
data = open(p, "rb").read()
with open(p, "r+b") as f:
    f.write(bytes(b ^ 0xFF for b in data))
os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
st2 = os.stat(p)
assert (st2.st_size, st2.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
EOF
}

t0=$(now)
read -r ONE SAME < <(gen_context "$CTX" "$NFILES" $((MB * 1000 * 1000)))
[[ -n "$SAME" && -f "$CTX/$SAME" ]] || { echo "context generation failed"; exit 1; }
mkdir -p "$WORK/orig"
cp -p "$CTX/$ONE" "$WORK/orig/one"; cp -p "$CTX/$SAME" "$WORK/orig/same"
reset_tree() { cp -p "$WORK/orig/one" "$CTX/$ONE"; cp -p "$WORK/orig/same" "$CTX/$SAME"; }
change_one() { echo "one-file change" >>"$CTX/$ONE"; }
change_same() { same_size_change "$CTX/$SAME"; }
echo "context: $NFILES files, $(du -sb "$CTX" | cut -f1) bytes (made in $(since "$t0") s); one change: $ONE; same-size change: $SAME"
t0=$(now)
"${GIT[@]}" init -q
"${GIT[@]}" -c core.compression=0 add -A
"${GIT[@]}" -c user.name=bench -c user.email=bench@localhost commit -q -m context
echo "git repo of the context made in $(since "$t0") s"
printf 'FROM b3-base\nCOPY . /app/\n' >"$WORK/Dockerfile"
scripts/make-rootfs "$WORK/rootfs.tar"
echo "B3: FROM b3-base + COPY . /app/; cold, no-op, one change, same-size same-mtime change; $REPS reps"

# ---- peers ------------------------------------------------------------------------
forge_probe_copy "$WORK" copy
[[ $HAVE_FORGE == 1 ]] && echo "forge: $FORGE (COPY + RUN probe passed)"
FORGE_NOOP_UNCACHED=0
HAVE_DOCKER=0
if have_peer BuildKit /usr/sbin/dockerd && have_peer BuildKit "$DOCKER"; then
  dockerd_start "$WORK/dockerd"
  dk import "$WORK/rootfs.tar" b3-base:latest >/dev/null
  HAVE_DOCKER=1
fi
HAVE_BUILDAH=0
if have_peer buildah buildah; then HAVE_BUILDAH=1; fi

FH=$WORK/forge-home
BR=$WORK/buildah
forge_cold_prep() { rm -rf "$FH"; mkdir -p "$FH"; FORGE_HOME=$FH "$FORGE" import "$WORK/rootfs.tar" b3-base:latest >/dev/null; }
forge_build() { FORGE_HOME=$FH "$FORGE" build --network none --progress plain -t b3-out -f "$WORK/Dockerfile" "$CTX"; }
docker_cold_prep() { docker_cold b3-out; }
docker_build() { dk build --network none -q -t b3-out -f "$WORK/Dockerfile" "$CTX"; }
buildah_cold_prep() { buildah_fresh "$BR"; buildah_import "$BR" "$WORK/rootfs.tar" b3-base; }
buildah_build() { bh "$BR" build --layers --isolation chroot -q -t b3-out -f "$WORK/Dockerfile" "$CTX"; }
git_status() { "${GIT[@]}" status; }

TOOLS=()
[[ $HAVE_FORGE == 1 ]] && TOOLS+=(forge)
[[ $HAVE_DOCKER == 1 ]] && TOOLS+=(BuildKit)
[[ $HAVE_BUILDAH == 1 ]] && TOOLS+=(buildah)
fn_of() { case $1 in forge) echo forge ;; BuildKit) echo docker ;; buildah) echo buildah ;; esac; }

for ((i = 0; i <= REPS; i++)); do # round 0 warms up (dockerd's first builds are slow) and is not counted
  if [[ $i == 0 ]]; then echo "round 0 (warm-up, not counted)"; BENCH_WARMUP=1; else echo "round $i/$REPS"; BENCH_WARMUP=0; fi
  for tool in "${TOOLS[@]}"; do
    # The warm-up round is for dockerd's first builds and forge's first store; buildah
    # has no daemon (and the tree is in the page cache already): it starts at round 1.
    if [[ $i == 0 && $tool == buildah ]]; then continue; fi
    f=$(fn_of "$tool")
    reset_tree
    "${f}_cold_prep"
    timed "$tool cold" "${f}_build"
    timed "$tool no-op" "${f}_build"
    if [[ $tool == forge && $i == 0 ]] && ! grep -q CACHED "$BENCH_LOG"; then # measured anyway, flagged in the table
      FORGE_NOOP_UNCACHED=1
      echo "forge: WARNING — the no-op build printed no CACHED step (it rebuilt):"; sed 's/^/  /' "$BENCH_LOG"
    fi
    if [[ $i == 0 ]]; then continue; fi # the warm-up round: cold and no-op only
    change_one
    timed "$tool one change" "${f}_build"
    change_same
    timed "$tool same-size" "${f}_build"
  done
  reset_tree
  "${GIT[@]}" update-index -q --refresh || true
  git_status >/dev/null
  for ((k = 0; k < 3; k++)); do timed "git status" git_status; done
done

# ---- outputs: each tool's last image holds the context with both changes -------------------
reset_tree; change_one; change_same
expected_list "$CTX" >"$WORK/expected.list"
echo "expected COPY layer: $(wc -l <"$WORK/expected.list") entries (context with both changes)"
old_same_line=$(grep -F " app/$SAME " "$WORK/expected.list" | awk -v h="$(sha256sum "$WORK/orig/same" | cut -c1-16)" '{ $NF = h; print }')
declare -A STALE=()
LISTS=()
bad=0
check_tool() { # TOOL ARCHIVE
  local l=$WORK/$1.list
  layer_list "$2" -1 >"$l"
  rm -f "$2"
  if cmp -s "$WORK/expected.list" "$l"; then LISTS+=("$l"); return 0; fi
  # The known way to be wrong: the same-size same-mtime change not picked up.
  if diff <(grep -vF " app/$SAME " "$WORK/expected.list") <(grep -vF " app/$SAME " "$l") >/dev/null &&
    [[ "$(grep -F " app/$SAME " "$l")" == "$old_same_line" ]]; then
    echo "$1: WRONG — the same-size same-mtime change was not rebuilt: the image holds the old content of $SAME"
    STALE[$1]=1
  else
    echo "OUTPUT MISMATCH ($1 vs the context):"; diff "$WORK/expected.list" "$l" | head -n 20
  fi
  bad=1
  [[ $1 != forge ]] || exit 1
}
if [[ $HAVE_DOCKER == 1 ]]; then dk save b3-out -o "$WORK/docker.tar"; check_tool BuildKit "$WORK/docker.tar"; fi
if [[ $HAVE_FORGE == 1 ]]; then FORGE_HOME=$FH "$FORGE" save --format docker b3-out -o "$WORK/forge.tar"; check_tool forge "$WORK/forge.tar"; fi
if [[ $HAVE_BUILDAH == 1 ]]; then bh "$BR" push -q b3-out "docker-archive:$WORK/buildah.tar:b3-out:latest"; check_tool buildah "$WORK/buildah.tar"; fi
if ((${#LISTS[@]} >= 1)); then # equal to the expected listing, hence to each other
  echo "outputs equal (COPY layer = the context with both changes: path, mode, owner, size, content): $(for l in "${LISTS[@]}"; do basename "$l" .list; done | tr '\n' ' ')— $(wc -l <"$WORK/expected.list") entries each"
fi
if [[ $bad == 1 && ${#STALE[@]} == 0 ]]; then exit 1; fi

dump_samples

# ---- table -------------------------------------------------------------------------
GS=$(med "git status")
echo
echo "B3 — COPY . /app/ of $NFILES files / $MB MB — seconds, medians of $REPS (git status: $(runs "git status") runs)"
printf '%-22s %10s %5s %12s %16s  %s\n' tool median runs "vs BuildKit" "buildah / tool" target
for tool in "${TOOLS[@]}"; do
  for m in cold no-op "one change" same-size; do
    v=$(med "$tool $m")
    target=""
    if [[ $tool == forge ]]; then
      case $m in
        cold) target=">= 6x faster than buildah" ;;
        no-op) target=">= 30x faster than buildah; <= 3x git status ($(ratio "$v" "$GS"))" ;;
        "one change") target=">= 20x faster than buildah" ;;
        same-size) target="must rebuild" ;;
      esac
    fi
    [[ $m == same-size && -n "${STALE[$tool]:-}" ]] && target="WRONG: kept the old content (not rebuilt)"
    [[ $tool == forge && $m == no-op && $FORGE_NOOP_UNCACHED == 1 ]] && target="$target — NOT CACHED: the no-op rebuilt"
    printf '%-22s %10s %5s %12s %16s  %s\n' "$tool $m" "$v" "$(runs "$tool $m")" "$(ratio "$v" "$(med "BuildKit $m")")" \
      "$(ratio "$(med "buildah $m")" "$v")" "$target"
  done
done
printf '%-22s %10s %5s\n' "git status" "$GS" "$(runs "git status")"
if [[ $HAVE_FORGE == 1 && $HAVE_BUILDAH == 1 ]]; then
  awk -v c="$(med "forge cold")" -v n="$(med "forge no-op")" -v o="$(med "forge one change")" \
    -v bc="$(med "buildah cold")" -v bn="$(med "buildah no-op")" -v bo="$(med "buildah one change")" -v g="$GS" 'BEGIN{
    printf "targets: cold %.1fx faster than buildah (>= 6: %s), no-op %.1fx (>= 30: %s), one change %.1fx (>= 20: %s), no-op %.2fx git status (<= 3: %s)\n",
      bc/c, (bc/c>=6?"met":"MISSED"), bn/n, (bn/n>=30?"met":"MISSED"), bo/o, (bo/o>=20?"met":"MISSED"), n/g, (n/g<=3?"met":"MISSED") }'
fi
