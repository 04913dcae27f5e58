#!/bin/sh
# Assembles the app into $1 (a bin/ directory with the `hello` script).
set -eu
out="${1:?usage: build.sh OUT}"
mkdir -p "$out/bin"
sed "s/@VERSION@/${APP_VERSION:-dev}/" src/hello.sh > "$out/bin/hello"
chmod 0755 "$out/bin/hello"
echo "built $out/bin/hello"
