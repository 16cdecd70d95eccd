#!/usr/bin/env bash
# The suite as replicas on Docker Swarm (docker-stack.yml), tested as a user meets it:
#   - chat members on three different streaming replicas see each other, every line in one
#     order, with unique Client(N) numbers; killing a replica's container announces its
#     member as left, and the others go on;
#   - a login made on one auth replica is valid on the other, and a logout there ends it
#     everywhere;
#   - 64 writers against two logger replicas, one killed meanwhile: every acknowledged
#     event is in the audit log;
#   - a rolling update (`docker service update --force`) of every service while clients
#     call each one by `tasks.<service>`: no call fails for a client that retries UNAVAILABLE.
# It deploys its own stack on OS-chosen host ports with its own secrets, and removes it all
# afterwards (and the swarm, if it made it). Skips, saying why, where no swarm can be made.
set -euo pipefail
cd "$(dirname "$0")/.."

export STACK_NAME=${STACK_NAME:-grpcsuite-swarmtest}
work=$(mktemp -d /var/tmp/swarm-test.XXXXXX)
export SUITE_STATE_DIR="$work/state"
mkdir -p "$SUITE_STATE_DIR" "$work/ctl"
NET="${STACK_NAME}_suite"
IMAGE=${SUITE_IMAGE:-grpc-suite:latest}

TEST_NAME=swarm
# shellcheck source=scripts/test-lib.sh
source scripts/test-lib.sh

if ! docker info >/dev/null 2>&1; then
  echo "Skipping the Swarm test: no Docker engine answers 'docker info' here."
  exit 0
fi
if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
  if ! reason=$(docker swarm init --advertise-addr "${SWARM_ADVERTISE_ADDR:-127.0.0.1}" 2>&1); then
    echo "Skipping the Swarm test: 'docker swarm init' fails here: $reason"
    exit 0
  fi
  # swarm-down.sh leaves the swarm it finds this marker for.
  touch "$SUITE_STATE_DIR/swarm-created"
fi

helpers=()
cleanup() {
  # -v: the helpers' anonymous volumes (the image declares its data folders) go too.
  for name in "${helpers[@]}"; do docker rm -f -v "$name" >/dev/null 2>&1 || true; done
  jobs -p | xargs -r kill 2>/dev/null || true
  bash scripts/swarm-down.sh >/dev/null 2>&1 || true
  # The tasks Swarm replaced (the killed replicas, the rolling update) left theirs.
  remove_new_volumes
  rm -rf "$work"
}
trap cleanup EXIT
remember_volumes

pick_service_ports

step "host clients, images, scripts/swarm-up.sh"
cargo build --quiet --locked --workspace --bins
bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug
bash scripts/swarm-up.sh || fail "swarm-up.sh"
ok "stack up: every replica running and healthy"

containers() { docker ps -q --filter "label=com.docker.swarm.service.name=${STACK_NAME}_$1"; }
address() { docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$1"; }
# A client run inside the stack's network, where tasks.<service> names every replica.
inside() { docker run --rm --network "$NET" --entrypoint "$1" "$IMAGE" "${@:2}"; }

step "replicas"
for pair in file:3 random:3 streaming:3 auth:2 logger:2; do
  service=${pair%:*} want=${pair#*:}
  got=$(containers "$service" | wc -l)
  [ "$got" = "$want" ] || fail "$service has $got containers running, not $want"
done
ok "3 file, 3 random, 3 streaming, 2 auth, 2 logger replicas"

step "calls are spread over the replicas (tasks.<service>)"
# One client process making 30 calls by tasks.random; each replica's own /metrics (read in
# its network namespace: the image has no HTTP client) counts the calls it served.
metric() { # container
  nsenter --net="/proc/$(docker inspect -f '{{.State.Pid}}' "$1")/ns/net" python3 - <<'PY'
import re, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9100/metrics", timeout=5).read().decode()
print(sum(int(float(m)) for m in re.findall(r'^grpc_server_started_total\{[^}]*grpc_method="GetRandomNumbers"[^}]*\} (\S+)', text, re.M)))
PY
}
mapfile -t randoms < <(containers random)
declare -A before
for container in "${randoms[@]}"; do before[$container]=$(metric "$container"); done
inside sh -c 'i=0; while [ $i -lt 30 ]; do random_client --server http://tasks.random:50052 --min 1 --max 9 --count 1 --delay 0 >/dev/null || exit 1; i=$((i+1)); done' \
  || fail "30 calls by tasks.random"
spread=""
for container in "${randoms[@]}"; do
  served=$(( $(metric "$container") - before[$container] ))
  spread="$spread $served"
  [ "$served" -gt 0 ] || fail "a random replica served none of 30 calls (per replica:$spread)"
done
echo "30 random_client runs by tasks.random, calls per replica:$spread"
ok "calls spread over every random replica"

step "chat across three streaming replicas"
mapfile -t streaming < <(containers streaming)
for index in 0 1 2; do
  mkfifo "$work/chat-in-$index"
  docker exec -i "${streaming[$index]}" streaming_client --server http://127.0.0.1:50053 chat \
    <"$work/chat-in-$index" >"$work/chat-out-$index" 2>&1 &
  eval "exec {feed_$index}>\"$work/chat-in-$index\""
done
say() { local fd_name="feed_$1"; echo "$2" >&"${!fd_name}"; }
wait_for() { # file pattern seconds
  local deadline=$((SECONDS + $3))
  until grep -qE "$2" "$1"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}
for index in 0 1 2; do
  wait_for "$work/chat-out-$index" 'You are Client\([0-9]+\)' 20 \
    || fail "member $index got no name: $(cat "$work/chat-out-$index")"
done
for index in 0 1 2; do say "$index" "line $index from replica $index"; done
for round in 1 2 3; do for index in 0 1 2; do say "$index" "round $round from $index"; done; done
for index in 0 1 2; do
  wait_for "$work/chat-out-$index" 'round 3 from 2' 20 && wait_for "$work/chat-out-$index" 'round 3 from 0' 5 \
    && wait_for "$work/chat-out-$index" 'round 3 from 1' 5 \
    || fail "member $index did not see every line: $(cat "$work/chat-out-$index")"
done
names=$(for index in 0 1 2; do grep -oE 'You are Client\([0-9]+\)' "$work/chat-out-$index"; done | sort -u | wc -l)
[ "$names" = 3 ] || fail "members' numbers are not unique: $(grep -h 'You are' "$work"/chat-out-*)"
order() { grep -oE 'Client\([0-9]+\): (line|round) [0-9].*' "$1"; }
for index in 1 2; do
  diff <(order "$work/chat-out-0") <(order "$work/chat-out-$index") >/dev/null \
    || fail "members 0 and $index saw different orders: $(diff <(order "$work/chat-out-0") <(order "$work/chat-out-$index"))"
done
[ "$(order "$work/chat-out-0" | wc -l)" = 12 ] || fail "not 12 lines: $(order "$work/chat-out-0")"
ok "three members on three replicas: unique numbers, all 12 lines, one order"

step "a streaming replica killed: its member leaves, the others stay"
gone=$(grep -oE 'You are Client\([0-9]+\)' "$work/chat-out-2" | grep -oE 'Client\([0-9]+\)')
docker kill "${streaming[2]}" >/dev/null
for index in 0 1; do
  wait_for "$work/chat-out-$index" "$(printf '%s' "$gone" | sed 's/[()]/\\&/g') has left" 30 \
    || fail "member $index was not told $gone left: $(tail -5 "$work/chat-out-$index")"
done
say 0 "after the loss"
wait_for "$work/chat-out-1" 'after the loss' 20 || fail "the others no longer chat: $(tail -5 "$work/chat-out-1")"
for index in 0 1; do say "$index" quit; done
exec {feed_0}>&- {feed_1}>&- {feed_2}>&-
ok "$gone announced as left; the other members go on"

step "a session made on one auth replica, checked and ended on the other"
mapfile -t auth < <(containers auth)
session=$(docker exec "${auth[0]}" auth_client --server http://127.0.0.1:50054 --print-session) \
  || fail "login on auth replica 1"
# A file server guarded by one given auth replica: a call with the session passes only if
# that replica knows the session.
guarded() { # name auth-address
  helpers+=("$1")
  docker run -d --name "$1" --network "$NET" --entrypoint file_server "$IMAGE" \
    --addr 0.0.0.0:50051 --dir /tmp --auth-url "http://$2:50054" >/dev/null
  local deadline=$((SECONDS + 30))
  until docker exec "$1" file_server --addr 0.0.0.0:50051 --health-check >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "guarded file server $1 did not start"
    sleep 0.5
  done
}
guarded "$STACK_NAME-guard-b" "$(address "${auth[1]}")"
docker exec "$STACK_NAME-guard-b" file_client --server http://127.0.0.1:50051 --session "$session" hello swarm >/dev/null \
  || fail "the session from replica 1 is not valid on replica 2"
docker exec "${auth[1]}" auth_client --server http://127.0.0.1:50054 --logout "$session" >/dev/null \
  || fail "logout on replica 2"
guarded "$STACK_NAME-guard-a" "$(address "${auth[0]}")"
if docker exec "$STACK_NAME-guard-a" file_client --server http://127.0.0.1:50051 --session "$session" hello swarm >"$work/after-logout" 2>&1; then
  fail "the session ended on replica 2 is still valid on replica 1"
fi
grep -q UNAUTHENTICATED "$work/after-logout" || fail "not refused as UNAUTHENTICATED: $(cat "$work/after-logout")"
ok "login on replica 1, valid on replica 2, logged out there, refused on replica 1"

step "64 writers, two logger replicas, one killed: no acknowledged event lost"
# 64 writers in a container on the network, each logging 12 events by tasks.logger with an
# event id (so a call a dying replica did not answer is sent to the other); each records
# the events acknowledged.
cp "$SUITE_STATE_DIR/logger_write.token" "$work/ctl/token"
writers='
w=1
while [ $w -le 64 ]; do
  (
    e=1
    while [ $e -le 12 ]; do
      id="swarm-w$w-e$e"
      logger_client --server http://tasks.logger:50055 --token-file /ctl/token \
        log --type SWARM_TEST --details "$id" --event-id "$id" >/dev/null 2>&1 && echo "$id"
      e=$((e + 1))
    done
  ) >"/ctl/acked-$w" &
  w=$((w + 1))
done
wait
'
mapfile -t loggers < <(containers logger)
helpers+=("$STACK_NAME-writers")
docker run -d --name "$STACK_NAME-writers" --network "$NET" -v "$work/ctl:/ctl" \
  --entrypoint sh "$IMAGE" -c "$writers" >/dev/null
sleep 2
docker kill "${loggers[0]}" >/dev/null
docker wait "$STACK_NAME-writers" >/dev/null
cat "$work"/ctl/acked-* | sort -u >"$work/acked"
acked=$(wc -l <"$work/acked")
[ "$acked" -gt 0 ] || fail "no event was acknowledged"
inside logger_client --server http://tasks.logger:50055 query --type SWARM_TEST --limit 1000 \
  | grep -oE 'swarm-w[0-9]+-e[0-9]+' | sort -u >"$work/stored" || fail "querying the log"
missing=$(comm -23 "$work/acked" "$work/stored" | wc -l)
[ "$missing" = 0 ] || fail "$missing acknowledged events are not in the log: $(comm -23 "$work/acked" "$work/stored" | head)"
echo "acknowledged $acked of 768 events (one of two loggers killed under load), all stored"
ok "no acknowledged event lost"

step "the published ports (Swarm's routing mesh)"
if [ -d /proc/sys/net/ipv4/vs ]; then
  "$bin/file_client" --server "http://127.0.0.1:$FILE_SERVICE_PORT" hello host >/dev/null \
    || fail "file_client on the published port $FILE_SERVICE_PORT"
  ok "file service answers on its published port"
else
  echo "skipped: this kernel has no IPVS (/proc/sys/net/ipv4/vs), which the routing mesh needs"
fi

step "rolling update of every service while clients call them"
# Each client calls its service by tasks.<service> (calls spread, a refused replica skipped)
# and tries again on UNAVAILABLE, as a client of replicas should; any other failure counts.
loop='
calls=0 fails=0 retries=0
call() {
  tries=0
  while :; do
    if out=$("$@" 2>&1); then calls=$((calls + 1)); return 0; fi
    case "$out" in
      *unavailable*|*UNAVAILABLE*|*"cannot reach"*|*"closed the connection"*)
        tries=$((tries + 1)) retries=$((retries + 1))
        [ $tries -lt 100 ] || { echo "FAIL (still unavailable): $*: $out"; fails=$((fails + 1)); return 1; } ;;
      *) echo "FAIL: $*: $out"; fails=$((fails + 1)); return 1 ;;
    esac
  done
}
while [ ! -e /ctl/stop ]; do
  call file_client --server http://tasks.file:50051 hello rolling
  call random_client --server http://tasks.random:50052 --min 1 --max 9 --count 2 --delay 0
  call streaming_client --server http://tasks.streaming:50053 time --count 1
  call auth_client --server http://tasks.auth:50054 --print-session
  call logger_client --server http://tasks.logger:50055 query --limit 1
done
echo "calls=$calls retries=$retries fails=$fails"
'
helpers+=("$STACK_NAME-rolling")
docker run -d --name "$STACK_NAME-rolling" --network "$NET" -v "$work/ctl:/ctl" \
  --entrypoint sh "$IMAGE" -c "$loop" >/dev/null
sleep 3
for service in file random streaming auth logger; do
  docker service update --force --detach=false --quiet "${STACK_NAME}_$service" >/dev/null \
    || fail "docker service update $service"
  echo "updated $service"
done
touch "$work/ctl/stop"
docker wait "$STACK_NAME-rolling" >/dev/null
result=$(docker logs "$STACK_NAME-rolling" 2>&1)
echo "$result" | tail -n 3
echo "$result" | grep -q 'fails=0$' || fail "calls failed during the rolling update: $result"
calls=$(echo "$result" | grep -oE 'calls=[0-9]+' | tail -1)
[ "${calls#calls=}" -gt 0 ] || fail "no call was made"
ok "rolling update of all five services: $calls, none failed"

echo "swarm: $passed passed, 0 failed"
