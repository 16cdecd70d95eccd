#!/usr/bin/env bash
# Makes the images of the Swarm stack's shared state, from Debian's packages on the same
# Debian base image as the suite (scripts/docker-base-images.sh makes it when no registry
# can be reached):
#   - grpc-suite-postgres (docker/postgres): PostgreSQL, the logger's audit log and auth's
#     sessions;
#   - grpc-suite-nats (docker/nats): NATS with JetStream, the chat bus joining the streaming
#     replicas.
# An image that already exists is left alone (REBUILD=1 builds again).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME_IMAGE=${RUNTIME_IMAGE:-debian:bookworm-slim}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-grpc-suite-postgres:latest}
NATS_IMAGE=${NATS_IMAGE:-grpc-suite-nats:latest}

bash scripts/docker-base-images.sh

for pair in "$POSTGRES_IMAGE docker/postgres" "$NATS_IMAGE docker/nats"; do
  read -r image context <<<"$pair"
  if [ "${REBUILD:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "image present: $image"
    continue
  fi
  echo "building $image from $context"
  docker build --quiet --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" -t "$image" "$context" >/dev/null
done
