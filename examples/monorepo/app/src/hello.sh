#!/bin/sh
# A tiny "app": greets, or answers a health check.
case "${1:-}" in
  --check) exit 0 ;;
  --name) echo "hello, ${2:-world} (version @VERSION@)" ;;
  *) echo "hello (version @VERSION@)" ;;
esac
