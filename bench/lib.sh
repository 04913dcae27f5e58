# Shared helpers for the bench/ scripts (sourced, not run). House style: fixtures
# made by the script, peers side by side A B A B, each peer its own storage root,
# outputs checked, medians and ratios printed.
#
#   source "$(dirname "$0")/lib.sh"
#
# Provides:
#   now / since START             wall clock (seconds, float) and elapsed since START
#   median                        median of whitespace-separated numbers on stdin
#   ratio A B                     A/B with two decimals ("-" if either is missing)
#   record KEY SECONDS            append a sample to RESULTS[KEY]
#   timed KEY CMD...              run CMD (output to $BENCH_LOG), record its wall time;
#                                 on failure print the log and exit
#   have_peer NAME BIN            1 if BIN is installed, else print a "skipped" line
#   dockerd_start DIR             start Debian's dockerd with its state in DIR, export
#                                 DOCKER_HOST; dockerd_stop (also run by bench_cleanup)
#   dk ARGS...                    /usr/bin/docker (another docker CLI may come first on PATH)
#   buildah_fresh ROOT            empty buildah storage root at ROOT (unmounts leftovers)
#   bh ROOT ARGS...               buildah with its own --root/--runroot under ROOT
#   buildah_import ROOT TAR NAME  make a base image from a rootfs tarball
#   forge_probe WORK              build forge, check `forge build` runs a RUN step;
#                                 sets HAVE_FORGE=1/0 and FORGE (the binary)
#   forge_probe_copy WORK [copy|add]  forge_probe, then check a COPY step (or ADD of a
#                                 local tar) builds; HAVE_FORGE=0 with the reason if not
#   debian_minbase_tar OUT        debootstrap bookworm minbase rootfs tar (~121 MB),
#                                 made once, cached in $BENCH_FIXTURES
#   layer_list ARCHIVE [all|-1]   normalized listing of image layers in a docker-archive
#                                 (path, mode, uid:gid, type, size and content hash)
#   same_outputs TITLE FILE...    compare listings, print the verdict, exit 1 on mismatch
#   print_row TOOL MEDIAN RUNS BASE TARGET   one table row with the ratio to BASE
#   dump_samples                  with BENCH_SAMPLES=1, print every sample
#   bench_cleanup                 stop dockerd, remove temp state (installed as EXIT trap
#                                 by bench_init)
# shellcheck shell=bash

BENCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKER=/usr/bin/docker
PY=/usr/bin/python3
declare -A RESULTS=()
BENCH_DOCKERD_DIR=""
BENCH_CLEAN_DIRS=()
BENCH_LOG=""

bench_init() { # WORKDIR: state of this run (removed at exit unless BENCH_KEEP=1)
  BENCH_WORK=$1
  mkdir -p "$BENCH_WORK"
  BENCH_LOG="$BENCH_WORK/last-command.log"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  local rc=$?
  dockerd_stop || true
  local d
  for d in "${BENCH_CLEAN_DIRS[@]}"; do
    [[ -n "$d" && -d "$d" ]] || continue
    unmount_under "$d"
    [[ "${BENCH_KEEP:-}" == 1 ]] || rm -rf "$d"
  done
  return $rc
}

now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN{printf "%.4f", e-s}'; }
median() { tr ' \t' '\n\n' | grep . | sort -g | awk '{a[NR]=$1} END{if (NR==0) print "-"; else printf "%.4f\n", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ratio() { awk -v a="${1:--}" -v b="${2:--}" 'BEGIN{ if (a=="-" || b=="-" || b+0==0) print "-"; else printf "%.2fx", a/b }'; }
record() { [[ "${BENCH_WARMUP:-}" == 1 ]] || RESULTS[$1]+="$2 "; } # not during a warm-up round
runs() { wc -w <<<"${RESULTS[$1]:-}"; }
med() { median <<<"${RESULTS[$1]:-}"; }

timed() { # KEY CMD...
  local key=$1 start t
  shift
  start=$(now)
  if ! "$@" >"$BENCH_LOG" 2>&1; then
    echo "FAILED ($key): $*" >&2
    tail -n 40 "$BENCH_LOG" >&2
    exit 1
  fi
  t=$(since "$start")
  record "$key" "$t"
}

have_peer() { # NAME BIN
  if command -v "$2" >/dev/null 2>&1; then return 0; fi
  echo "$1: $2 not installed, skipped (this script installs nothing)"
  return 1
}

dk() { "$DOCKER" "$@"; }

dockerd_start() { # DIR
  local d=$1 i
  [[ -x /usr/sbin/dockerd && -x $DOCKER ]] || { echo "BuildKit: /usr/sbin/dockerd or $DOCKER missing (apt-get install docker.io)" >&2; return 1; }
  mkdir -p "$d"
  BENCH_DOCKERD_DIR=$d
  /usr/sbin/dockerd --data-root "$d/data" --exec-root "$d/exec" -H "unix://$d/docker.sock" \
    --pidfile "$d/pid" --iptables=false --ip6tables=false --bridge=none >"$d/dockerd.log" 2>&1 &
  echo $! >"$d/started-pid"
  export DOCKER_HOST="unix://$d/docker.sock" DOCKER_BUILDKIT=1
  for ((i = 0; i < 150; i++)); do
    if [[ -S "$d/docker.sock" ]] && dk version >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "dockerd did not come up; log:" >&2
  tail -n 20 "$d/dockerd.log" >&2
  return 1
}

dockerd_stop() {
  local d=$BENCH_DOCKERD_DIR pid i
  [[ -n "$d" && -f "$d/started-pid" ]] || return 0
  pid=$(cat "$d/started-pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$d/started-pid"
  unmount_under "$d"
  BENCH_DOCKERD_DIR=""
}

unmount_under() { # DIR: unmount everything mounted below DIR (deepest first)
  local m
  { awk '{print $2}' /proc/self/mounts | grep -F "$1/" || true; } | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

# BuildKit "cold": drop the build cache and the output images; the imported base stays.
docker_cold() { # IMAGE...
  dk rmi -f "$@" >/dev/null 2>&1 || true
  dk builder prune -af >/dev/null
}

bh() { local r=$1; shift; buildah --root "$r/root" --runroot "$r/runroot" --storage-driver overlay "$@"; }

buildah_fresh() { # ROOT
  unmount_under "$1"
  rm -rf "$1"
  mkdir -p "$1"
}

buildah_import() { # ROOT TAR NAME
  local c
  c=$(bh "$1" from -q scratch)
  bh "$1" add -q "$c" "$2" / >/dev/null
  bh "$1" commit -q "$c" "$3" >/dev/null
  bh "$1" rm "$c" >/dev/null
}

# forge: build the CLI and probe that `forge build` can run a RUN step (it exits 2
# "cannot run yet" while the executor is being written).
HAVE_FORGE=0
FORGE=$BENCH_REPO/target/release/forge
forge_probe() { # WORK
  local w=$1/forge-probe out
  if [[ "${BENCH_NO_FORGE:-}" == 1 ]]; then echo "forge: skipped (BENCH_NO_FORGE=1)"; return 0; fi
  if ! (cd "$BENCH_REPO" && cargo build --release -q -p forge-cli) >"$1/forge-cargo.log" 2>&1; then
    echo "forge: skipped — \`cargo build --release -p forge-cli\` fails ($(grep -m1 '^error' "$1/forge-cargo.log" || tail -n1 "$1/forge-cargo.log"))"
    return 0
  fi
  rm -rf "$w"; mkdir -p "$w/ctx"
  "$BENCH_REPO/scripts/make-rootfs" "$w/rootfs.tar"
  printf 'FROM probe-base\nRUN echo ok > /probe\n' >"$w/ctx/Dockerfile"
  if ! out=$(FORGE_HOME=$w/home "$FORGE" import "$w/rootfs.tar" probe-base:latest 2>&1); then
    echo "forge: skipped — \`forge import\` fails: $(head -n3 <<<"$out" | tr '\n' ' ')"
    return 0
  fi
  if ! out=$(FORGE_HOME=$w/home "$FORGE" build --network none --progress plain -t probe -f "$w/ctx/Dockerfile" "$w/ctx" 2>&1); then
    echo "forge: skipped — \`forge build\` cannot run a RUN step yet: $(grep -v '^\s*$' <<<"$out" | head -n3 | tr '\n' ' ')"
    return 0
  fi
  HAVE_FORGE=1
  rm -rf "$w"
}

# A normalized listing of an image's layers from a docker-archive (`docker save`,
# `forge save --format docker`, `buildah push docker-archive:`): one line per entry
# with layer number, path, mode, owner, type and size+sha256 prefix for files.
# Left out: directories (tools differ in which unchanged parents they record) and
# the mount-point stubs buildah leaves behind (/etc/hosts, /etc/hostname,
# /etc/resolv.conf, /run). `which` is `all` or a layer index (default -1: the last).
layer_list() { # ARCHIVE [which]
  "$PY" - "$1" "${2:--1}" <<'EOF'
import hashlib, io, json, sys, tarfile
path, which = sys.argv[1], sys.argv[2]
STUBS = {"etc/hosts", "etc/hostname", "etc/resolv.conf", "run"}
with tarfile.open(path) as outer:
    man = json.load(outer.extractfile("manifest.json"))
    layers = man[0]["Layers"]
    idx = range(len(layers)) if which == "all" else [int(which) % len(layers)]
    rows = []
    for n, i in enumerate(idx):
        data = outer.extractfile(layers[i]).read()
        with tarfile.open(fileobj=io.BytesIO(data)) as t:  # plain or gzip
            for m in t:
                name = m.name
                while name.startswith("./"): name = name[2:]
                name = name.strip("/")
                if name in ("", ".") or m.isdir() or name in STUBS: continue
                if name.rsplit("/", 1)[-1].startswith(".wh."):  # tools differ in whiteout modes
                    rows.append("L%d %s whiteout" % (n, name)); continue
                if m.isreg():
                    what = "f %d %s" % (m.size, hashlib.sha256(t.extractfile(m).read()).hexdigest()[:16])
                elif m.issym(): what = "l -> " + m.linkname
                elif m.islnk(): what = "h -> " + m.linkname.lstrip("./")
                elif m.ischr(): what = "c %d,%d" % (m.devmajor, m.devminor)
                else: what = "?" + m.type.decode()
                rows.append("L%d %s %o %d:%d %s" % (n, name, m.mode & 0o7777, m.uid, m.gid, what))
    print("\n".join(sorted(rows)))
EOF
}

# Config fields that every tool must agree on: Env entries other than PATH, Cmd.
image_config() { # ARCHIVE
  "$PY" - "$1" <<'EOF'
import json, sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    man = json.load(t.extractfile("manifest.json"))
    cfg = json.load(t.extractfile(man[0]["Config"])).get("config") or {}
    env = [e for e in (cfg.get("Env") or []) if not e.startswith("PATH=")]
    print(json.dumps({"Env": env, "Cmd": cfg.get("Cmd")}, sort_keys=True))
EOF
}

same_outputs() { # TITLE FILE... (first file is the reference)
  local title=$1 ref=$2 f bad=0
  shift 2
  for f in "$@"; do
    if ! cmp -s "$ref" "$f"; then
      echo "OUTPUT MISMATCH ($title): $(basename "$ref") vs $(basename "$f"):"
      diff "$ref" "$f" | head -n 20
      bad=1
    fi
  done
  if [[ $bad == 1 ]]; then exit 1; fi
  echo "outputs equal ($title): $(($# + 1)) tools, $(wc -l <"$ref") entries each"
}

# BENCH_SAMPLES=1: print every sample (to see noise from other load on the machine).
dump_samples() {
  [[ "${BENCH_SAMPLES:-}" == 1 ]] || return 0
  local k
  echo "samples:"
  for k in "${!RESULTS[@]}"; do printf '  %-34s %s\n' "$k" "${RESULTS[$k]}"; done | sort
}

print_header() { printf '%-34s %10s %5s %12s  %s\n' "tool" "median" "runs" "vs BuildKit" "target"; }
print_row() { # TOOL MEDIAN RUNS BASE TARGET
  printf '%-34s %10s %5s %12s  %s\n' "$1" "$2" "$3" "$(ratio "$2" "$4")" "$5"
}

# forge_probe_copy WORK [copy|add]: after forge_probe, check that `forge build` can
# also run a COPY step (`copy`, the default) or ADD of a local tar, which must be
# unpacked (`add`). forge exits 2 "COPY is not supported yet" while COPY/ADD are
# being written; then HAVE_FORGE=0 and the reason is printed.
forge_probe_copy() { # WORK [copy|add]
  local what=${2:-copy} w=$1/forge-probe-copy out df
  forge_probe "$1"
  [[ $HAVE_FORGE == 1 ]] || return 0
  rm -rf "$w"; mkdir -p "$w/ctx/sub" "$w/t/dir"
  "$BENCH_REPO/scripts/make-rootfs" "$w/rootfs.tar"
  echo hello >"$w/ctx/sub/a.txt"
  echo inner >"$w/t/dir/in.txt"
  tar --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 -C "$w/t" -cf "$w/ctx/t.tar" .
  if [[ $what == add ]]; then
    df='FROM probe-base\nADD t.tar /x/\nRUN test "$(cat /x/dir/in.txt)" = inner\n'
  else
    df='FROM probe-base\nCOPY sub /app/\nRUN test "$(cat /app/a.txt)" = hello\n'
  fi
  printf "$df" >"$w/ctx/Dockerfile"
  if ! out=$(FORGE_HOME=$w/home "$FORGE" import "$w/rootfs.tar" probe-base:latest 2>&1); then
    echo "forge: skipped — \`forge import\` fails: $(head -n3 <<<"$out" | tr '\n' ' ')"
    HAVE_FORGE=0; return 0
  fi
  if ! out=$(FORGE_HOME=$w/home "$FORGE" build --network none --progress plain -t probe -f "$w/ctx/Dockerfile" "$w/ctx" 2>&1); then
    echo "forge: skipped — \`forge build\` cannot run ${what^^} yet: $(grep -v '^\s*$' <<<"$out" | tail -n3 | tr '\n' ' ')"
    HAVE_FORGE=0; return 0
  fi
  rm -rf "$w"
}

# debian_minbase_tar OUT: a Debian bookworm minbase rootfs tarball (~121 MB, no
# .debs, apt lists or device nodes, like Debian's container images), made
# once with debootstrap from the mirror in /etc/apt/sources.list.d/debian.sources
# (~30 s) and cached in $BENCH_FIXTURES (default /tmp/forge-bench-fixtures); the tar
# is written with --sort=name --mtime=@0 --numeric-owner, so packing the same tree
# again gives the same bytes. OUT is a hardlink (or copy) of the cached tar.
BENCH_FIXTURES=${BENCH_FIXTURES:-/tmp/forge-bench-fixtures}
debian_minbase_tar() { # OUT
  local cached=$BENCH_FIXTURES/debian-bookworm-minbase.tar mirror dir
  if [[ ! -s $cached ]]; then
    command -v debootstrap >/dev/null || { echo "debootstrap not installed (apt-get install debootstrap)" >&2; return 1; }
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    mkdir -p "$BENCH_FIXTURES"
    dir=$BENCH_FIXTURES/debian-root.$$
    rm -rf "$dir"
    echo "fixture: debootstrap --variant=minbase bookworm from $mirror (once, ~30 s; cached in $BENCH_FIXTURES)"
    if ! debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$BENCH_FIXTURES/debootstrap.log" 2>&1; then
      echo "debootstrap failed; log: $BENCH_FIXTURES/debootstrap.log" >&2
      tail -n 5 "$BENCH_FIXTURES/debootstrap.log" >&2
      unmount_under "$dir"; rm -rf "$dir"; return 1
    fi
    unmount_under "$dir"
    # like Debian's container images: no downloaded .debs, no apt lists, no device nodes
    find "$dir/var/cache/apt/archives" "$dir/var/lib/apt/lists" -type f -delete
    rm -f "$dir"/var/cache/apt/*.bin
    find "$dir/dev" -mindepth 1 -delete
    tar --sort=name --mtime=@0 --numeric-owner -C "$dir" -cf "$cached.tmp" .
    mv "$cached.tmp" "$cached"
    rm -rf "$dir"
  fi
  rm -f "$1"
  ln "$cached" "$1" 2>/dev/null || cp "$cached" "$1"
}
