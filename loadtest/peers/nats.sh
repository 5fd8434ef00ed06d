#!/usr/bin/env bash
# Runs nats-server in the foreground: clients (the publisher) on 127.0.0.1:PORT, WebSocket
# subscribers on 127.0.0.1:WSPORT.
# Usage: nats.sh PORT WSPORT DIR
set -euo pipefail
port=${1:?port}
wsport=${2:?wsport}
dir=${3:?dir}
mkdir -p "$dir"
cat > "$dir/nats.conf" <<CONF
listen: "127.0.0.1:$port"
max_payload: 1MB
max_pending: 256MB
write_deadline: "30s"
websocket {
  listen: "127.0.0.1:$wsport"
  no_tls: true
  compression: false
}
CONF
exec nats-server -c "$dir/nats.conf"
