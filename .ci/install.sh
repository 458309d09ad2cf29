#!/usr/bin/env bash
# Installs Debian packages the tests use, without letting them start
# system-wide daemons (tests start their own on free loopback ports).
set -euo pipefail
need=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
((${#need[@]})) || exit 0
policy=/usr/sbin/policy-rc.d created=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created=1
fi
rc=0
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/dev/null || rc=$?
((created)) && rm -f "$policy"
exit $rc
