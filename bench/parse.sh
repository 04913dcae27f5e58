#!/usr/bin/env bash
# Frontend speed: parse and lower a generated 2,000-line Dockerfile and a forge.toml
# with 200 images (release build, medians of 51 runs). Target: well under 1 ms per
# 100 Dockerfile lines.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --locked -q -p forge-frontend --example parse_bench
