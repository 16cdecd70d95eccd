#!/usr/bin/env bash
# Runs the suite as replicas on Docker Swarm (docker-stack.yml): builds the images a swarm
# cannot build itself (the suite's, by the Dockerfile; PostgreSQL's and NATS's, from
# Debian's packages), makes this machine a one-node swarm if it is in none, and deploys.
# Waits until every replica is up and healthy. `scripts/swarm-down.sh` removes it all.
#
# Environment: STACK_NAME (default grpc-suite); FILE_SERVICE_PORT … LOGGER_SERVICE_PORT to
# publish elsewhere than the usual 50051-50055; SUITE_STATE_DIR (default .swarm) for the
# database password and the logger write token, made at first deploy; SKIP_BUILD=1 to
# deploy images already built.
set -euo pipefail
cd "$(dirname "$0")/.."

STACK_NAME=${STACK_NAME:-grpc-suite}
SUITE_STATE_DIR=$(mkdir -p "${SUITE_STATE_DIR:-.swarm}" && cd "${SUITE_STATE_DIR:-.swarm}" && pwd)
export SUITE_STATE_DIR
export SUITE_IMAGE=${SUITE_IMAGE:-grpc-suite:latest}
export POSTGRES_IMAGE=${POSTGRES_IMAGE:-grpc-suite-postgres:latest}
export NATS_IMAGE=${NATS_IMAGE:-grpc-suite-nats:latest}

if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
  echo "making this machine a one-node swarm"
  docker swarm init --advertise-addr "${SWARM_ADVERTISE_ADDR:-127.0.0.1}" >/dev/null
  # swarm-down.sh leaves the swarm only if this script made it.
  touch "$SUITE_STATE_DIR/swarm-created"
fi

# Secrets made once, kept with the stack's data (never in git).
secret() { [ -s "$1" ] || (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$1"); }
secret "$SUITE_STATE_DIR/postgres_password"
secret "$SUITE_STATE_DIR/logger_write.token"
SUITE_PG_PASSWORD=$(cat "$SUITE_STATE_DIR/postgres_password")
export SUITE_PG_PASSWORD

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  bash scripts/docker-state-images.sh
  echo "building $SUITE_IMAGE (Dockerfile)"
  docker build --quiet -t "$SUITE_IMAGE" . >/dev/null
fi

echo "deploying the stack $STACK_NAME"
# The images are local: no registry to resolve them in.
docker stack deploy --resolve-image never --prune -c docker-stack.yml "$STACK_NAME" >/dev/null

deadline=$((SECONDS + ${SWARM_UP_TIMEOUT:-240}))
while :; do
  pending=$(docker service ls --filter "label=com.docker.stack.namespace=$STACK_NAME" \
    --format '{{.Name}} {{.Replicas}}' | awk '{ split($2, n, "/"); if (n[1] != n[2]) print $1 " " $2 }')
  [ -z "$pending" ] && break
  if [ $SECONDS -ge $deadline ]; then
    echo "not every replica is up:" >&2
    echo "$pending" >&2
    docker service ps --no-trunc --filter desired-state=running \
      $(echo "$pending" | awk '{print $1}') >&2 || true
    exit 1
  fi
  sleep 2
done
docker service ls --filter "label=com.docker.stack.namespace=$STACK_NAME" \
  --format '{{.Name}}\t{{.Replicas}}\t{{.Ports}}'
echo "up: file :${FILE_SERVICE_PORT:-50051}, random :${RANDOM_SERVICE_PORT:-50052}, streaming :${STREAMING_SERVICE_PORT:-50053}, auth :${AUTH_SERVICE_PORT:-50054}, logger :${LOGGER_SERVICE_PORT:-50055}"
