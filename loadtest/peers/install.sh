#!/usr/bin/env bash
# Installs the peers the load tester compares the gateway with: nginx with nchan, and
# nats-server (Debian's packages).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q nginx-light libnginx-mod-nchan nats-server >/dev/null
nginx -v
nats-server --version
