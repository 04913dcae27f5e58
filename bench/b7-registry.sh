#!/usr/bin/env bash
# B7: registries — push and pull of a ~120 MB image, and a batch push of 10 images
# sharing that image's layer; forge vs skopeo, against Debian's CNCF distribution
# registry (/usr/bin/docker-registry) on 127.0.0.1 (plain HTTP).
#
# Peer figures in BENCHMARKS.md: skopeo 0.37 s push / 0.28 s pull; re-push 30-40 ms
# per image. forge targets: push and pull <= 1.0x skopeo; re-push of 10 <= 150 ms;
# unique bytes uploaded once.
#
# Fixture (made by this script, the same bytes on every run): busybox
# (scripts/make-rootfs) + /data/blobNNN, 8 MiB files of seeded pseudo-random bytes
# (every 4th one base64 text), B7_MB MiB in all: the gzip layer is ~94 % of the tar,
# so nothing compresses away. `forge import` makes it a one-layer image (gzip, as
# import does) in forge's store; `forge build` makes the 10 batch images from it
# (FROM the base + COPY of a unique 16 KiB file: one small layer each), tagged
# 127.0.0.1:PORT/b7/batch:N. skopeo reads the same store (oci:$FORGE_HOME:REF), so
# both tools move the same bytes: skopeo runs with --preserve-digests, else it would
# gzip the uncompressed layers forge's builds store (and forge pushes as they are).
#
# Four registries, each on its own port for the whole run, restarted with an empty
# storage dir (on a tmpfs: B7_REGISTRY_DIR) before every round, so each push is cold
# (nothing is in the registry, and no other repository there could lend a blob by
# mount); `sync` before each timed step (not timed) keeps the writeback of the
# previous step out of it:
#   F  forge push / forge pull       S  skopeo push / skopeo pull
#   FB forge batch                   SB skopeo batch
# Every round (round 0 is a warm-up, not counted; then B7_REPS rounds, A B A B):
#   push      forge push F/b7/forge:1 vs skopeo copy --preserve-digests
#             --dest-tls-verify=false oci:$FORGE_HOME:b7-base:1 docker://S/b7/skopeo:1
#   pull      forge pull F/b7/forge:1 into an empty FORGE_HOME
#             vs skopeo copy --src-tls-verify=false docker://S/b7/skopeo:1 oci:EMPTYDIR:b7:1
#   batch     forge push -a FB/b7/batch (10 tags, cold)
#             vs 10 x skopeo copy oci:$FORGE_HOME:FB/b7/batch:N docker://SB/b7/batch:N
#   re-push   the same again, everything already there
# Bytes uploaded: from each registry's access log (Apache combined format on its
# stdout): every completed blob upload is a `PUT .../blobs/uploads/...?digest=D`;
# uploaded bytes = sum of those blobs' sizes (their `data` files in the registry's
# storage). Checked every round: the shared layer goes up exactly once per batch,
# uploaded bytes = unique bytes (all blob data in storage less the manifests), and
# forge's re-push sends nothing but blob HEADs and manifest PUTs.
# Outputs checked: forge's push digest = skopeo's (--digestfile) = what `skopeo
# inspect` reports, for the single image and each batch tag; the image pulled by
# either tool has the imported image's ID (config digest) and manifest digest;
# `forge fsck` of the pulled store is clean.
#
# Environment:
#   B7_MB=120  image size in MiB (B7_QUICK=1: 30)     B7_IMAGES=10   batch size
#   B7_REPS=7 (B7_QUICK=1: 2)                        B7_DIR=/tmp/forge-b7
#   B7_REGISTRY_DIR=/dev/shm/forge-b7-registries   the registries' storage and logs
#   BENCH_NO_FORGE=1   peers only (forge still makes the fixture store)
#   BENCH_SAMPLES=1    print every sample            BENCH_KEEP=1   keep B7_DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$BENCH_REPO"

if [[ "${B7_QUICK:-}" == 1 ]]; then
  MB=${B7_MB:-30}; REPS=${B7_REPS:-2}
else
  MB=${B7_MB:-120}; REPS=${B7_REPS:-7}
fi
NIMG=${B7_IMAGES:-10}
WORK=${B7_DIR:-/tmp/forge-b7}
REGISTRY_BIN=/usr/bin/docker-registry
# The registries' storage: on a tmpfs by default, so the timings are the clients' and
# not the registry's fsyncs on a disk busy writing back the previous step.
REGROOT=${B7_REGISTRY_DIR:-/dev/shm/forge-b7-registries}
rm -rf "$WORK" "$REGROOT"
bench_init "$WORK"
BENCH_CLEAN_DIRS+=("$WORK" "$REGROOT")
mkdir -p "$REGROOT"

# ---- registries -------------------------------------------------------------------
declare -A REG_PID=() REG_ADDR=()
reg_stop() { # NAME
  local pid=${REG_PID[$1]:-}
  [[ -n "$pid" ]] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  REG_PID[$1]=""
}
reg_stop_all() { local r; for r in "${!REG_PID[@]}"; do reg_stop "$r"; done; }
b7_cleanup() { local rc=$?; reg_stop_all; (exit "$rc"); bench_cleanup; }
trap b7_cleanup EXIT

reg_dir() { echo "$REGROOT/registry-$1"; }
reg_fresh() { # NAME: (re)start registry NAME on its port with an empty storage dir and log
  local name=$1 d i
  d=$(reg_dir "$name")
  reg_stop "$name"
  rm -rf "$d"
  mkdir -p "$d/storage"
  cat >"$d/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $d/storage
  delete:
    enabled: true
http:
  addr: ${REG_ADDR[$name]}
EOF
  "$REGISTRY_BIN" serve "$d/config.yml" >"$d/access.log" 2>&1 &
  REG_PID[$name]=$!
  for ((i = 0; i < 200; i++)); do
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://${REG_ADDR[$name]}/v2/" 2>/dev/null) == 200 ]]; then return 0; fi
    sleep 0.05
  done
  echo "registry $name (${REG_ADDR[$name]}) did not come up; log:" >&2
  tail -n 20 "$d/access.log" >&2
  exit 1
}
# The access log is written as requests end: wait until it stops growing.
log_settle() { # NAME
  local f a b=-1 i
  f=$(reg_dir "$1")/access.log
  for ((i = 0; i < 60; i++)); do
    a=$(wc -l <"$f")
    [[ "$a" == "$b" ]] && return 0
    b=$a
    sleep 0.05
  done
}
# One line per request of the access log after line MARK: METHOD PATH STATUS (without
# the readiness probes of reg_fresh)
requests() { # NAME [MARK]
  log_settle "$1"
  tail -n +"$((${2:-0} + 1))" "$(reg_dir "$1")/access.log" | grep -v '"curl/' |
    sed -nE 's/^[^"]*"([A-Z]+) ([^ ]+) HTTP\/[0-9.]+" ([0-9]+) .*/\1 \2 \3/p'
}
log_lines() { log_settle "$1"; wc -l <"$(reg_dir "$1")/access.log"; }
blob_size() { # NAME HEX
  local h=$2
  stat -c %s "$(reg_dir "$1")/storage/docker/registry/v2/blobs/sha256/${h:0:2}/$h/data"
}
# Upload accounting of registry NAME since MARK: sets UP_COUNT (blobs uploaded),
# UP_BYTES (their sizes) and UP_DIGESTS (hex, one a line).
uploads() { # NAME [MARK]
  local req h
  req=$(requests "$1" "${2:-0}")
  UP_DIGESTS=$(awk '$1=="PUT" && $2 ~ /\/blobs\/uploads\// && $3 ~ /^20/ {print $2}' <<<"$req" |
    sed -nE 's/.*digest=sha256(:|%3A|%3a)([0-9a-f]{64}).*/\2/p')
  UP_COUNT=0; UP_BYTES=0
  for h in $UP_DIGESTS; do
    UP_COUNT=$((UP_COUNT + 1))
    UP_BYTES=$((UP_BYTES + $(blob_size "$1" "$h")))
  done
}
storage_bytes() { # NAME: all blob data in the registry's storage
  find "$(reg_dir "$1")/storage/docker/registry/v2/blobs" -name data -type f -printf '%s\n' 2>/dev/null | awk '{s+=$1} END{print s+0}'
}
method_counts() { # (requests on stdin) -> "3 HEAD, 1 PUT manifest, ..."
  awk '{k=$1; if ($2 ~ /\/manifests\//) k=k" manifest"; else if ($2 ~ /\/blobs\/uploads\//) k=k" upload"; else if ($2 ~ /\/blobs\//) k=k" blob"; c[k]++}
       END{for (k in c) printf "%d %s\n", c[k], k}' | sort -k2 | paste -sd, | sed 's/,/, /g'
}

# ---- tools ------------------------------------------------------------------------
[[ -x $REGISTRY_BIN ]] || { echo "B7 needs $REGISTRY_BIN (apt-get install docker-registry); this script installs nothing"; exit 1; }
command -v curl >/dev/null || { echo "B7 needs curl"; exit 1; }
if ! cargo build --release --locked -q -p forge-cli >"$WORK/forge-cargo.log" 2>&1; then
  echo "B7 needs forge to make its fixture: \`cargo build --release --locked -p forge-cli\` fails:"
  tail -n 20 "$WORK/forge-cargo.log"; exit 1
fi
TOOLS=()
if [[ "${BENCH_NO_FORGE:-}" == 1 ]]; then echo "forge: skipped (BENCH_NO_FORGE=1; it still makes the fixture)"; else TOOLS+=(forge); fi
HAVE_SKOPEO=0
if have_peer skopeo skopeo; then HAVE_SKOPEO=1; TOOLS+=(skopeo); fi
((${#TOOLS[@]} > 0)) || { echo "nothing to measure"; exit 1; }

read -r PF PS PFB PSB < <("$PY" -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
REG_ADDR=([F]=127.0.0.1:$PF [S]=127.0.0.1:$PS [FB]=127.0.0.1:$PFB [SB]=127.0.0.1:$PSB)
F=${REG_ADDR[F]} S=${REG_ADDR[S]} FB=${REG_ADDR[FB]} SB=${REG_ADDR[SB]}

# ---- fixture ----------------------------------------------------------------------
FH=$WORK/forge-home
CTX=$WORK/ctx
mkdir -p "$CTX"
scripts/make-rootfs "$WORK/busybox.tar"
"$PY" - "$WORK/busybox.tar" "$MB" "$WORK/image.tar" "$CTX" "$NIMG" <<'EOF'
import base64, io, random, sys, tarfile
src, mb, out, ctx, nimg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
rng = random.Random(7)  # Mersenne Twister: the same bytes for a seed on every Python >= 3.9
with tarfile.open(src) as t, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as o:
    for m in t:
        o.addfile(m, t.extractfile(m) if m.isreg() else None)
    d = tarfile.TarInfo("data"); d.type = tarfile.DIRTYPE; d.mode = 0o755
    o.addfile(d)
    left, i = mb << 20, 0
    while left > 0:
        n = min(8 << 20, left)
        if i % 4 == 3:  # text: base64 of random bytes (gzip keeps ~76 % of it)
            data = base64.encodebytes(rng.randbytes(n * 3 // 4 + 3))[:n]
        else:           # random bytes: incompressible
            data = rng.randbytes(n)
        f = tarfile.TarInfo("data/blob%03d" % i); f.size = n; f.mode = 0o644
        o.addfile(f, io.BytesIO(data))
        left -= n; i += 1
for n in range(1, nimg + 1):
    with open("%s/u%d" % (ctx, n), "wb") as f:
        f.write(random.Random(1000 + n).randbytes(16 << 10))
EOF
printf 'FROM b7-base:1\nARG N\nCOPY u$N /unique\n' >"$CTX/Dockerfile"
fg() { FORGE_HOME=$FH "$FORGE" "$@"; }
fg import "$WORK/image.tar" b7-base:1 -m "B7 fixture" >/dev/null
fg tag b7-base:1 "$F/b7/forge:1"
for ((n = 1; n <= NIMG; n++)); do
  fg build -q --network none --build-arg "N=$n" -t "$FB/b7/batch:$n" "$CTX" >/dev/null
done

# Manifest digest, config digest and layer sizes of REF in the OCI layout DIR.
oci_info() { # DIR REF -> "MANIFEST CONFIG LAYERBYTES..."
  "$PY" - "$1" "$2" <<'EOF'
import json, sys
root, ref = sys.argv[1], sys.argv[2]
index = json.load(open(root + "/index.json"))
for m in index["manifests"]:
    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
        man = json.load(open(root + "/blobs/sha256/" + m["digest"].split(":")[1]))
        print(m["digest"], man["config"]["digest"], " ".join(str(l["size"]) for l in man["layers"]))
        break
else:
    sys.exit("no %s in %s" % (ref, root))
EOF
}
read -r BASE_MANIFEST BASE_ID BASE_LAYER < <(oci_info "$FH" docker.io/library/b7-base:1)
read -r _ _ B1_BASE B1_UNIQUE < <(oci_info "$FH" "$FB/b7/batch:1")
[[ "$B1_BASE" == "$BASE_LAYER" ]] || { echo "batch image 1 does not start with the base layer"; exit 1; }
TAR_BYTES=$(stat -c %s "$WORK/image.tar")
mbf() { awk -v b="$1" 'BEGIN{ if (b=="-") print "-"; else if (b < 1e6) printf "%.1f kB", b/1e3; else printf "%.1f MB", b/1e6 }'; }
echo "B7: image: tar $(mbf "$TAR_BYTES"), one gzip layer $(mbf "$BASE_LAYER") ($(awk -v a="$BASE_LAYER" -v b="$TAR_BYTES" 'BEGIN{printf "%.0f", 100*a/b}') % of the tar); batch: $NIMG images = that layer + one of $(mbf "$B1_UNIQUE") each; $REPS reps"
awk -v a="$BASE_LAYER" -v b="$TAR_BYTES" 'BEGIN{exit !(a > b/2)}' || { echo "the fixture compresses too well"; exit 1; }
echo "registries: F $F, S $S, FB $FB, SB $SB (docker-registry $("$REGISTRY_BIN" --version | awk '{print $NF}'), skopeo $(skopeo --version 2>/dev/null | awk '{print $NF}'))"

# ---- measurements -----------------------------------------------------------------
skopeo_batch() {
  local n
  for ((n = 1; n <= NIMG; n++)); do
    skopeo copy -q --preserve-digests --dest-tls-verify=false --digestfile "$WORK/skopeo-batch-$n.digest" \
      "oci:$FH:$FB/b7/batch:$n" "docker://$SB/b7/batch:$n"
  done
}
fail() { echo "CHECK FAILED: $*" >&2; exit 1; }
# Batch accounting of registry NAME since MARK (the cold batch push): the base layer
# uploaded once; uploaded bytes = all blob data in storage less the manifests.
check_batch_uploads() { # TOOL NAME MARK MANIFEST_BYTES
  uploads "$2" "$3"
  local base_ups unique
  base_ups=$(grep -c "^${BASE_ID_LAYER_HEX}\$" <<<"$UP_DIGESTS" || true)
  [[ $base_ups == 1 ]] || fail "$1 batch: the shared layer went up $base_ups times"
  unique=$(($(storage_bytes "$2") - $4))
  [[ $UP_BYTES == "$unique" ]] || fail "$1 batch: uploaded $UP_BYTES bytes, unique blob bytes $unique"
  [[ $UP_COUNT == $((2 * NIMG + 1)) ]] || fail "$1 batch: $UP_COUNT blob uploads, expected $((2 * NIMG + 1)) (1 shared layer + $NIMG layers + $NIMG configs)"
  record "$1 batch bytes" "$UP_BYTES"
  record "$1 batch uploads" "$UP_COUNT"
}
BASE_ID_LAYER_HEX=$("$PY" -c '
import json, sys
root = sys.argv[1]; m = sys.argv[2].split(":")[1]
print(json.load(open(root + "/blobs/sha256/" + m))["layers"][0]["digest"].split(":")[1])' "$FH" "$BASE_MANIFEST")

declare -A BATCH_DIGEST=()
for ((i = 0; i <= REPS; i++)); do # round 0 warms up and is not counted
  if [[ $i == 0 ]]; then echo "round 0 (warm-up, not counted)"; BENCH_WARMUP=1; else echo "round $i/$REPS"; BENCH_WARMUP=0; fi
  reg_fresh F; reg_fresh S; reg_fresh FB; reg_fresh SB

  # push + pull of the one image
  for tool in "${TOOLS[@]}"; do
    case $tool in
      forge)
        sync; timed "forge push" env FORGE_HOME="$FH" "$FORGE" push -q "$F/b7/forge:1"
        FORGE_PUSH_DIGEST=$(tail -n1 "$BENCH_LOG")
        [[ $FORGE_PUSH_DIGEST == "$BASE_MANIFEST" ]] || fail "forge push printed $FORGE_PUSH_DIGEST, the stored manifest is $BASE_MANIFEST"
        uploads F; record "forge push bytes" "$UP_BYTES"; FORGE_PUSH_REQ=$(requests F | method_counts) ;;
      skopeo)
        sync; timed "skopeo push" skopeo copy -q --preserve-digests --dest-tls-verify=false --digestfile "$WORK/skopeo-push.digest" \
          "oci:$FH:docker.io/library/b7-base:1" "docker://$S/b7/skopeo:1"
        [[ $(cat "$WORK/skopeo-push.digest") == "$BASE_MANIFEST" ]] || fail "skopeo pushed $(cat "$WORK/skopeo-push.digest"), not $BASE_MANIFEST"
        uploads S; record "skopeo push bytes" "$UP_BYTES"; SKOPEO_PUSH_REQ=$(requests S | method_counts) ;;
    esac
  done
  for tool in "${TOOLS[@]}"; do
    case $tool in
      forge)
        rm -rf "$WORK/pull-forge"
        sync; timed "forge pull" env FORGE_HOME="$WORK/pull-forge" "$FORGE" pull -q "$F/b7/forge:1"
        read -r m c _ < <(oci_info "$WORK/pull-forge" "$F/b7/forge:1")
        [[ $m == "$BASE_MANIFEST" && $c == "$BASE_ID" ]] || fail "forge pulled manifest $m / image $c, expected $BASE_MANIFEST / $BASE_ID" ;;
      skopeo)
        rm -rf "$WORK/pull-skopeo"
        sync; timed "skopeo pull" skopeo copy -q --src-tls-verify=false "docker://$S/b7/skopeo:1" "oci:$WORK/pull-skopeo:b7:1"
        read -r m c _ < <(oci_info "$WORK/pull-skopeo" "b7:1")
        [[ $m == "$BASE_MANIFEST" && $c == "$BASE_ID" ]] || fail "skopeo pulled manifest $m / image $c, expected $BASE_MANIFEST / $BASE_ID" ;;
    esac
  done

  # batch of NIMG images sharing the layer: cold, then again (all there)
  for tool in "${TOOLS[@]}"; do
    case $tool in
      forge)
        sync; timed "forge batch" env FORGE_HOME="$FH" "$FORGE" push -a "$FB/b7/batch"
        while read -r tag digest; do BATCH_DIGEST[forge $tag]=$digest; done < <(sed -nE 's/^([^ ]+): digest: (sha256:[0-9a-f]{64}) size: [0-9]+$/\1 \2/p' "$BENCH_LOG")
        [[ $(grep -c ': digest: sha256:' "$BENCH_LOG") == "$NIMG" ]] || fail "forge push -a pushed $(grep -c ': digest: ' "$BENCH_LOG") tags, not $NIMG"
        mbytes=0
        for ((n = 1; n <= NIMG; n++)); do d=${BATCH_DIGEST[forge $n]}; mbytes=$((mbytes + $(blob_size FB "${d#sha256:}"))); done
        check_batch_uploads forge FB 0 "$mbytes"
        mark=$(log_lines FB)
        sync; timed "forge re-push" env FORGE_HOME="$FH" "$FORGE" push -a "$FB/b7/batch"
        req=$(requests FB "$mark")
        FORGE_REPUSH_REQ=$(method_counts <<<"$req")
        other=$(awk '!(($1=="HEAD" && $2 ~ /\/blobs\/sha256:/ && $3==200) || ($1=="PUT" && $2 ~ /\/manifests\// && $3==201))' <<<"$req")
        [[ -z "$other" ]] || fail "forge re-push made other requests than blob HEADs and manifest PUTs: $(head -n3 <<<"$other")"
        [[ $(grep -c '^PUT' <<<"$req") == "$NIMG" ]] || fail "forge re-push put $(grep -c '^PUT' <<<"$req") manifests, not $NIMG" ;;
      skopeo)
        mark=$(log_lines SB)
        sync; timed "skopeo batch" skopeo_batch
        mbytes=0
        for ((n = 1; n <= NIMG; n++)); do
          d=$(cat "$WORK/skopeo-batch-$n.digest"); BATCH_DIGEST[skopeo $n]=$d
          mbytes=$((mbytes + $(blob_size SB "${d#sha256:}")))
        done
        check_batch_uploads skopeo SB "$mark" "$mbytes"
        mark=$(log_lines SB)
        sync; timed "skopeo re-push" skopeo_batch
        SKOPEO_REPUSH_REQ=$(requests SB "$mark" | method_counts)
        uploads SB "$mark"
        [[ $UP_COUNT == 0 ]] || fail "skopeo re-push uploaded $UP_COUNT blobs" ;;
    esac
  done
done

# ---- outputs: digests as skopeo inspect reports them ------------------------------
echo
sk_digest() { skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$1"; }
if [[ $HAVE_SKOPEO == 1 ]]; then
  if [[ " ${TOOLS[*]} " == *" forge "* ]]; then
    d=$(sk_digest "$F/b7/forge:1")
    [[ $d == "$FORGE_PUSH_DIGEST" ]] || fail "skopeo inspect says $d, forge push printed $FORGE_PUSH_DIGEST"
    for ((n = 1; n <= NIMG; n++)); do
      d=$(sk_digest "$FB/b7/batch:$n")
      [[ $d == "${BATCH_DIGEST[forge $n]}" ]] || fail "batch:$n: skopeo inspect says $d, forge printed ${BATCH_DIGEST[forge $n]}"
      [[ $d == "${BATCH_DIGEST[skopeo $n]}" ]] || fail "batch:$n: forge pushed $d, skopeo ${BATCH_DIGEST[skopeo $n]}"
    done
    echo "digests equal: forge push = skopeo push = skopeo inspect ($BASE_MANIFEST), and for each of the $NIMG batch tags"
  else
    echo "digests: skopeo push = the stored manifest ($BASE_MANIFEST)"
  fi
fi
if [[ " ${TOOLS[*]} " == *" forge "* ]]; then
  FORGE_HOME=$WORK/pull-forge "$FORGE" fsck >"$WORK/fsck.log" 2>&1 || { cat "$WORK/fsck.log"; fail "forge fsck of the pulled store"; }
  echo "pulled images: image ID $BASE_ID and manifest $BASE_MANIFEST from both tools; forge fsck of forge's pulled store: $(tail -n1 "$WORK/fsck.log")"
fi
echo "requests, last round:"
[[ " ${TOOLS[*]} " == *" forge "* ]] && echo "  forge push:     $FORGE_PUSH_REQ" && echo "  forge re-push:  $FORGE_REPUSH_REQ"
[[ $HAVE_SKOPEO == 1 ]] && echo "  skopeo push:    $SKOPEO_PUSH_REQ" && echo "  skopeo re-push: $SKOPEO_REPUSH_REQ"

dump_samples

# ---- table -------------------------------------------------------------------------
ms() { awk -v s="$1" 'BEGIN{ if (s=="-") print "-"; else printf "%.1f", s*1000 }'; }
mb_med() { local v; v=$(med "$1"); [[ $v == - ]] && echo - || mbf "$v"; }
echo
echo "B7 — registry push/pull of a $(mbf "$BASE_LAYER") image (one gzip layer, tar $(mbf "$TAR_BYTES")), batch of $NIMG sharing it (ms, medians of $REPS rounds)"
printf '%-26s %-7s %9s %5s %10s %14s  %s\n' measure tool median runs "vs skopeo" "bytes up" target
row() { # MEASURE TOOL KEY BYTESKEY TARGET
  local m b=-
  m=$(med "$2 $3")
  [[ -n "$4" ]] && b=$(mb_med "$2 $4")
  printf '%-26s %-7s %9s %5s %10s %14s  %s\n' "$1" "$2" "$(ms "$m")" "$(runs "$2 $3")" "$(ratio "$m" "$(med "skopeo $3")")" "$b" "$5"
}
for tool in "${TOOLS[@]}"; do
  t=""; [[ $tool == forge ]] && t="<= 1.0x skopeo"
  row "push $MB MiB image" "$tool" push "push bytes" "$t"
done
for tool in "${TOOLS[@]}"; do
  t=""; [[ $tool == forge ]] && t="<= 1.0x skopeo"
  row "pull $MB MiB image" "$tool" pull "" "$t"
done
for tool in "${TOOLS[@]}"; do
  t=""; [[ $tool == forge ]] && t="unique bytes once (shared layer $NIMG times: $(mbf "$((NIMG * BASE_LAYER))"))"
  row "batch push of $NIMG (cold)" "$tool" batch "batch bytes" "$t"
done
for tool in "${TOOLS[@]}"; do
  t=""; [[ $tool == forge ]] && t="<= 150 ms"
  row "re-push of $NIMG" "$tool" re-push "" "$t"
  per=$(med "$tool re-push")
  printf '%-26s %-7s %9s\n' "  per image" "$tool" "$(awk -v s="$per" -v n="$NIMG" 'BEGIN{ if (s=="-") print "-"; else printf "%.1f", s*1000/n }')"
done
if [[ " ${TOOLS[*]} " == *" forge "* ]]; then
  echo
  verdict() { awk -v r="$1" -v lim="$2" 'BEGIN{ if (r=="-") print "not measured"; else print ((r+0 <= lim) ? "met" : "MISSED") }'; }
  if [[ $HAVE_SKOPEO == 1 ]]; then
    r=$(ratio "$(med "forge push")" "$(med "skopeo push")"); echo "target: push <= 1.0x skopeo: ${r} — $(verdict "${r%x}" 1.0)"
    r=$(ratio "$(med "forge pull")" "$(med "skopeo pull")"); echo "target: pull <= 1.0x skopeo: ${r} — $(verdict "${r%x}" 1.0)"
  fi
  m=$(med "forge re-push"); echo "target: re-push of $NIMG <= 150 ms: $(ms "$m") ms — $(verdict "$m" 0.150)"
  echo "target: unique bytes uploaded once: the shared layer went up once in every round, uploaded = unique blob bytes ($(mb_med "forge batch bytes") in $(med "forge batch uploads" | cut -d. -f1) blobs) — met"
fi
