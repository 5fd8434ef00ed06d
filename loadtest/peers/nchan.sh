#!/usr/bin/env bash
# Runs nginx + nchan in the foreground on 127.0.0.1:PORT, configured for the load tester:
#   subscribe by WebSocket at /sub/<channel>, publish by HTTP POST to /pub/<channel>.
# Usage: nchan.sh PORT DIR   (DIR holds the generated configuration, pid and logs)
set -euo pipefail
port=${1:?port}
dir=${2:?dir}
mkdir -p "$dir"
module=$(ls /usr/lib/nginx/modules/ngx_nchan_module.so)
cat > "$dir/nginx.conf" <<CONF
load_module $module;
worker_processes 2;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 20000; multi_accept on; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  nchan_shared_memory_size 512M;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location ~ ^/sub/(\w+)\$ {
      nchan_subscriber websocket;
      nchan_channel_id \$1;
      nchan_subscriber_first_message newest;
    }
    location ~ ^/pub/(\w+)\$ {
      nchan_publisher;
      nchan_channel_id \$1;
      nchan_message_buffer_length 32;
      nchan_message_timeout 30s;
    }
  }
}
CONF
exec nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;'
