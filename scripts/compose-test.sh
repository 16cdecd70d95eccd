#!/usr/bin/env bash
# The whole suite under docker-compose, tested as a user meets it: `up --build`, every
# service healthy, each client run from the host against the published ports, audit events
# crossing the compose network to the logger (also across a logger outage), log rows
# surviving a restart of the stack, and `down` leaving nothing running. Then the same stack
# over TLS (docker-compose.tls.yml): certificates made at first start, every client from the
# host over https:// trusting that CA, mutual TLS to the logger, plaintext refused.
#
# It runs its own compose project with OS-chosen host ports and a temporary data folder, so
# it never disturbs a stack or server already running here. Fails fast, naming the step.
set -euo pipefail
cd "$(dirname "$0")/.."

export COMPOSE_PROJECT_NAME=grpcsuite-test
work=$(mktemp -d /var/tmp/compose-test.XXXXXX)
export DATA_ROOT="$work/data"
mkdir -p "$DATA_ROOT"/{uploaded_files,streamed_files,logs_data}
compose() { docker-compose "$@"; }

TEST_NAME=compose
# shellcheck source=scripts/test-lib.sh
source scripts/test-lib.sh

cleanup() {
  compose logs --no-color --tail 30 >"$work/compose.log" 2>&1 || true
  # --volumes: the TLS run's certificate volume belongs to this test project only.
  compose down --remove-orphans --volumes --timeout 15 >/dev/null 2>&1 || true
  # The containers the restarts and the plaintext run's `down` removed left theirs.
  remove_new_volumes
  rm -rf "$work"
}
trap cleanup EXIT
remember_volumes

pick_service_ports

step "base images and host clients"
bash scripts/docker-base-images.sh
cargo build --quiet --locked --workspace --bins
bin=${CARGO_TARGET_DIR:-target}/debug

step "docker-compose up -d --build"
compose up -d --build --quiet-pull 2>&1 | tail -n 5 || fail "compose up"

wait_healthy() {
  local deadline=$((SECONDS + 120)) service id state
  for service in file-service random-service streaming-service logger-service auth-service; do
    while :; do
      id=$(compose ps -q "$service")
      state=$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null || echo missing)
      [ "$state" = healthy ] && break
      [ $SECONDS -lt $deadline ] || { compose logs --tail 20 "$service"; fail "$service is $state, not healthy"; }
      sleep 1
    done
  done
}
wait_healthy
ok "all five services healthy"

step "image size"
image_bytes=$(docker image inspect -f '{{.Size}}' grpc-suite:latest)
echo "image grpc-suite:latest: $((image_bytes / 1000000)) MB"
[ "$image_bytes" -lt 60000000 ] || fail "the image is $((image_bytes / 1000000)) MB, over 60 MB"
ok "image under 60 MB"

step "metrics"
# Each container serves Prometheus text on :9100 (docker-compose.yml); scraped from the host
# over the compose network, since the image carries no HTTP client.
scrape() {
  python3 - "$1" <<'PY'
import sys, urllib.request
print(urllib.request.urlopen(f"http://{sys.argv[1]}:9100/metrics", timeout=5).read().decode())
PY
}
for service in file-service random-service streaming-service logger-service auth-service; do
  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(compose ps -q "$service")")
  scrape "$ip" >"$work/$service.metrics" || fail "scraping $service's metrics"
  grep -q '^grpc_server_handled_total{' "$work/$service.metrics" || fail "$service: no grpc_server_handled_total"
  if command -v promtool >/dev/null; then
    promtool check metrics <"$work/$service.metrics" || fail "$service: promtool check metrics"
  fi
done
ok "every container serves /metrics (health checks already counted there)"

url() { echo "http://127.0.0.1:$1"; }

step "file service"
[ "$($bin/file_client --server "$(url "$FILE_SERVICE_PORT")" hello Compose)" = "Hello, Compose!" ] || fail "hello"
echo "written through compose" | $bin/file_client --server "$(url "$FILE_SERVICE_PORT")" write - --as compose.txt >/dev/null
[ "$(cat "$DATA_ROOT/uploaded_files/compose.txt")" = "written through compose" ] || fail "file not in ./uploaded_files"
ok "file service: hello, and a written file lands in uploaded_files"

step "streaming upload"
head -c 3000000 /dev/urandom >"$work/upload.bin"
$bin/streaming_client --server "$(url "$STREAMING_SERVICE_PORT")" upload "$work/upload.bin" >"$work/upload.out" \
  || { cat "$work/upload.out"; fail "upload"; }
cmp "$work/upload.bin" "$DATA_ROOT/streamed_files/upload.bin" || fail "uploaded bytes differ"
ok "streaming: a 3 MB upload lands intact in streamed_files"

step "random numbers"
rows=$($bin/random_client --server "$(url "$RANDOM_SERVICE_PORT")" --min 1 --max 6 --count 5 --delay 0 \
  | grep -cE '^ +[1-5] +\| +[1-6] +\| [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}$' || true)
[ "$rows" = 5 ] || fail "expected 5 table rows, got $rows"
ok "random: five numbers in the table"

step "chat between two clients"
chat() { $bin/streaming_client --server "$(url "$STREAMING_SERVICE_PORT")" chat; }
{ sleep 4; echo quit; } | chat >"$work/chat-a.out" 2>&1 &
listener=$!
sleep 1
{ echo "hello from B"; sleep 1; echo quit; } | chat >"$work/chat-b.out" 2>&1
wait "$listener" || fail "first chat client failed: $(cat "$work/chat-a.out")"
grep -qE 'Client\([0-9]+\): hello from B' "$work/chat-a.out" || fail "A did not see B's line: $(cat "$work/chat-a.out")"
ok "chat: a line from one client reaches the other"

# The logger's rows of one event type, read straight from the host's ./logs_data.
count_events() {
  $bin/logger_query --db "$DATA_ROOT/logs_data/logs.db" --type "$1" --limit 1000 2>/dev/null \
    | sed -n 's/^Total: \([0-9]*\) logs$/\1/p'
}
wait_events() { # TYPE COUNT
  local deadline=$((SECONDS + 60))
  until [ "$(count_events "$1")" = "$2" ]; do
    [ $SECONDS -lt $deadline ] || fail "expected $2 $1 events, found '$(count_events "$1")'"
    sleep 1
  done
}
login_logout() {
  timeout 20 $bin/auth_client --server "$(url "$AUTH_SERVICE_PORT")" --logout-after 0 >"$work/auth.out" \
    || fail "auth_client: $(cat "$work/auth.out")"
}

step "auth events reach the logger by service name"
login_logout
wait_events SESSION_STARTED 1
wait_events SESSION_TERMINATED 1
ok "auth: login and logout recorded in logs_data/logs.db"

step "the audit log trusts only its writers"
if $bin/logger_client --server "$(url "$LOGGER_SERVICE_PORT")" log --type SESSION_STARTED \
  --details "User 'mallory' logged in" >/dev/null 2>"$work/forge.err"; then
  fail "an anonymous LogActivity was stored"
fi
grep -q UNAUTHENTICATED "$work/forge.err" || fail "anonymous write: $(cat "$work/forge.err")"
[ "$(count_events SESSION_STARTED)" = 1 ] || fail "a forged row was stored"
ok "logger: an anonymous LogActivity is refused, auth's own events landed"

step "logger outage"
compose stop logger-service >/dev/null 2>&1
login_logout
compose start logger-service >/dev/null 2>&1
wait_events SESSION_STARTED 2
wait_events SESSION_TERMINATED 2
ok "auth: events from a logger outage delivered once it is back"

step "restart of the whole stack"
compose down --timeout 15 >/dev/null 2>&1
compose up -d >/dev/null 2>&1
wait_healthy
[ "$(count_events SESSION_STARTED)" = 2 ] || fail "log rows lost across a restart"
ok "restart: log rows still there"

compose down --remove-orphans --timeout 15 >/dev/null 2>&1
[ -z "$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")" ] || fail "containers still running"
ok "down: no containers left"

# ---- the same stack over TLS -------------------------------------------------------------
# A fresh data folder, and the certificates in a host folder (TLS_CERTS_DIR) rather than the
# default named volume, so the host's clients can read ca.pem and the client certificate.
export COMPOSE_FILE=docker-compose.yml:docker-compose.tls.yml
export DATA_ROOT="$work/data-tls" TLS_CERTS_DIR="$work/certs"
mkdir -p "$DATA_ROOT"/{uploaded_files,streamed_files,logs_data}
ca=(--ca-cert "$TLS_CERTS_DIR/ca.pem")
client_cert=(--tls-cert "$TLS_CERTS_DIR/client.pem" --tls-key "$TLS_CERTS_DIR/client.key")
surl() { echo "https://localhost:$1"; }

step "TLS: docker-compose -f docker-compose.yml -f docker-compose.tls.yml up -d"
compose up -d 2>&1 | tail -n 5 || fail "compose up with TLS"
wait_healthy
for file in ca.pem server.pem server.key client.pem client.key; do
  [ -s "$TLS_CERTS_DIR/$file" ] || fail "certs: $file not made at first start"
done
for key in server.key client.key; do
  mode=$(stat -c %a "$TLS_CERTS_DIR/$key")
  [ "$mode" = 640 ] || fail "certs: $key has mode $mode, not 640"
done
ok "TLS: certificates made at first start, all five services healthy over TLS"

step "TLS: file service"
[ "$($bin/file_client --server "$(surl "$FILE_SERVICE_PORT")" "${ca[@]}" hello TLS)" = "Hello, TLS!" ] \
  || fail "hello over TLS"
echo "written over TLS" | $bin/file_client --server "$(surl "$FILE_SERVICE_PORT")" "${ca[@]}" write - --as tls.txt >/dev/null
[ "$(cat "$DATA_ROOT/uploaded_files/tls.txt")" = "written over TLS" ] || fail "file written over TLS not in uploaded_files"
ok "TLS file service: hello, and a written file lands in uploaded_files"

step "TLS: streaming upload"
$bin/streaming_client --server "$(surl "$STREAMING_SERVICE_PORT")" "${ca[@]}" upload "$work/upload.bin" >"$work/upload.out" \
  || { cat "$work/upload.out"; fail "upload over TLS"; }
cmp "$work/upload.bin" "$DATA_ROOT/streamed_files/upload.bin" || fail "bytes uploaded over TLS differ"
ok "TLS streaming: a 3 MB upload lands intact"

step "TLS: random numbers"
rows=$($bin/random_client --server "$(surl "$RANDOM_SERVICE_PORT")" "${ca[@]}" --min 1 --max 6 --count 5 --delay 0 \
  | grep -cE '^ +[1-5] +\| +[1-6] +\| [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}$' || true)
[ "$rows" = 5 ] || fail "expected 5 table rows over TLS, got $rows"
ok "TLS random: five numbers in the table"

# The logger's rows of one event type, asked over mutual TLS with the client certificate.
count_events_mtls() {
  $bin/logger_client --server "$(surl "$LOGGER_SERVICE_PORT")" "${ca[@]}" "${client_cert[@]}" \
    query --type "$1" --limit 1000 2>/dev/null | sed -n 's/^Total: \([0-9]*\) logs$/\1/p'
}
wait_events_mtls() { # TYPE COUNT
  local deadline=$((SECONDS + 60))
  until [ "$(count_events_mtls "$1")" = "$2" ]; do
    [ $SECONDS -lt $deadline ] || fail "expected $2 $1 events over mTLS, found '$(count_events_mtls "$1")'"
    sleep 1
  done
}

step "TLS: auth over TLS, its events to the logger over mutual TLS"
timeout 20 $bin/auth_client --server "$(surl "$AUTH_SERVICE_PORT")" "${ca[@]}" --logout-after 0 >"$work/auth.out" \
  || fail "auth_client over TLS: $(cat "$work/auth.out")"
wait_events_mtls SESSION_STARTED 1
wait_events_mtls SESSION_TERMINATED 1
ok "TLS auth: login and logout reach the logger over mTLS; queried from the host with client.pem"

step "TLS: refusals"
# Each must fail (exit non-zero) and quickly; `timeout` turns a hang into a failure too.
refused() { # DESCRIPTION COMMAND...
  local description=$1
  shift
  local status=0
  timeout 20 "$@" >"$work/refused.out" 2>&1 || status=$?
  [ "$status" != 0 ] || fail "$description: succeeded: $(cat "$work/refused.out")"
  [ "$status" != 124 ] || fail "$description: hung instead of being refused"
}
refused "a plaintext client to a TLS port" \
  $bin/file_client --server "$(url "$FILE_SERVICE_PORT")" hello Plain
refused "a TLS client that does not trust the dev CA" \
  $bin/file_client --server "$(surl "$FILE_SERVICE_PORT")" hello Untrusted
refused "a logger client without a client certificate" \
  $bin/logger_client --server "$(surl "$LOGGER_SERVICE_PORT")" "${ca[@]}" query
[ "$($bin/file_client --server "$(surl "$FILE_SERVICE_PORT")" "${ca[@]}" hello Still)" = "Hello, Still!" ] \
  || fail "the file service stopped answering after refused clients"
ok "TLS refusals: plaintext, an untrusted CA and a missing client certificate refused; servers unaffected"

step "TLS: restart of the whole stack keeps the certificates"
ca_before=$(sha256sum <"$TLS_CERTS_DIR/ca.pem")
compose down --timeout 15 >/dev/null 2>&1
compose up -d >/dev/null 2>&1
wait_healthy
[ "$(sha256sum <"$TLS_CERTS_DIR/ca.pem")" = "$ca_before" ] || fail "the CA was replaced on a second start"
[ "$(count_events_mtls SESSION_STARTED)" = 1 ] || fail "log rows lost across a TLS restart"
ok "TLS restart: same CA, healthy again, log rows still there"

compose down --remove-orphans --volumes --timeout 15 >/dev/null 2>&1
[ -z "$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")" ] || fail "containers still running"
ok "TLS down: no containers left"
echo "compose: $passed passed, 0 failed"
