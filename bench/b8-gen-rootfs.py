#!/usr/bin/env python3
"""B8 fixture: a busybox rootfs tar plus N small files, byte-identical every run.

    b8-gen-rootfs.py BUSYBOX_ROOTFS.tar N OUT.tar

Adds /data/dDDD/fFFF (200 files a directory, 150-450 bytes of deterministic text
each) and /bench/: change.sh (the RUN's work), modify.lst (1,000 files),
delete.lst (250), add.lst (250 new paths), dirs.lst. The change set is the same
size for every N, so the time per changed entry can be compared across rootfs sizes.
"""
import hashlib
import io
import sys
import tarfile

PER_DIR = 200
N_MODIFY, N_DELETE, N_ADD = 1000, 250, 250

CHANGE_SH = b"""#!/bin/sh
# B8 change set (shell builtins only, no fork per file): append to the files in
# /bench/modify.lst, delete /bench/delete.lst, create /bench/add.lst.
#   sh /bench/change.sh           on the rootfs: the layer gets 1,500 changed entries
#   sh /bench/change.sh TMPDIR    the same writes under TMPDIR (a tmpfs such as
#                                 /dev/shm/x), removed at the end: the layer is empty
set -e
if [ -n "$1" ]; then
  mkdir -p "$1"; cd "$1"
  xargs mkdir -p < /bench/dirs.lst
  while read f; do echo gone > "$f"; done < /bench/delete.lst
else
  cd /
fi
while read f; do echo changed >> "$f"; done < /bench/modify.lst
xargs rm < /bench/delete.lst
while read f; do echo "new $f" > "$f"; done < /bench/add.lst
if [ -n "$1" ]; then cd /; rm -rf "$1"; fi
echo "B8-RUN-EXIT $EPOCHREALTIME"  # the marker the benchmark times from (busybox sh has EPOCHREALTIME)
"""


def content(name: str) -> bytes:
    h = hashlib.sha256(name.encode()).hexdigest()
    n = 150 + int(h[:4], 16) % 301
    line = (name + " " + h + "\n").encode()
    return (line * (n // len(line) + 1))[:n]


def main() -> None:
    src, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if n % PER_DIR or n < N_MODIFY + N_DELETE:
        sys.exit(f"N must be a multiple of {PER_DIR} and >= {N_MODIFY + N_DELETE}")
    ndirs = n // PER_DIR
    dirs = [f"data/d{d:03d}" for d in range(ndirs)]
    files = [f"{d}/f{f:03d}" for d in dirs for f in range(PER_DIR)]
    step_m, step_d = n // N_MODIFY, n // N_DELETE
    modify = [files[i] for i in range(0, n, step_m)][:N_MODIFY]
    delete = [files[i] for i in range(1, n, step_d)][:N_DELETE]
    assert len(modify) == N_MODIFY and len(delete) == N_DELETE and not set(modify) & set(delete)
    add = [f"{dirs[j % ndirs]}/n{j:03d}" for j in range(N_ADD)]

    def entry(name, kind=tarfile.REGTYPE, data=b"", mode=0o644):
        ti = tarfile.TarInfo("./" + name)
        ti.type, ti.mode, ti.mtime, ti.uid, ti.gid = kind, mode, 0, 0, 0
        ti.uname = ti.gname = ""
        ti.size = len(data) if kind == tarfile.REGTYPE else 0
        return ti, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(src) as base, tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as t:
        for m in base:  # the busybox rootfs, unchanged
            t.addfile(m, base.extractfile(m) if m.isreg() else None)
        lists = {
            "add.lst": add, "delete.lst": delete, "dirs.lst": dirs, "modify.lst": modify,
        }
        t.addfile(*entry("bench", tarfile.DIRTYPE, mode=0o755))
        for name in sorted(lists):
            t.addfile(*entry("bench/" + name, data=("\n".join(lists[name]) + "\n").encode()))
        t.addfile(*entry("bench/change.sh", data=CHANGE_SH, mode=0o755))
        t.addfile(*entry("data", tarfile.DIRTYPE, mode=0o755))
        for d in dirs:
            t.addfile(*entry(d, tarfile.DIRTYPE, mode=0o755))
            for f in range(PER_DIR):
                name = f"{d}/f{f:03d}"
                t.addfile(*entry(name, data=content(name)))


main()
