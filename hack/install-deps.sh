#!/usr/bin/env bash
# Installs the system packages the tests use, when they are missing: Redis and
# Prometheus (Debian packages; the tests start their own servers on free ports).
# Safe to run repeatedly; it does nothing when everything is present.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${need[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: apt-get not found; install ${need[*]} by hand" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's packages may start their services; the tests run their own instances.
for svc in redis-server prometheus; do
  $sudo service "$svc" stop >/dev/null 2>&1 || true
done
