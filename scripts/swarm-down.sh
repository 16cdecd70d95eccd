#!/usr/bin/env bash
# Removes what scripts/swarm-up.sh made: the stack, its network, its volumes (uploaded
# files, the PostgreSQL data) and secrets, the passwords kept in SUITE_STATE_DIR, and the
# swarm itself if swarm-up.sh created it (a swarm that was there before is left alone).
set -euo pipefail
cd "$(dirname "$0")/.."

STACK_NAME=${STACK_NAME:-grpc-suite}
SUITE_STATE_DIR=${SUITE_STATE_DIR:-.swarm}

# The anonymous volumes of the stack's containers (the image declares its data folders as
# volumes), found before the containers go.
anonymous=$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK_NAME" \
  | xargs -r docker inspect -f '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}' 2>/dev/null || true)
if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" = active ]; then
  docker stack rm "$STACK_NAME" >/dev/null 2>&1 || true
  # The stack's containers stop (gracefully) before its network and volumes can go.
  deadline=$((SECONDS + 90))
  while docker ps -aq --filter "label=com.docker.stack.namespace=$STACK_NAME" | grep -q . \
    || docker network ls -q --filter "label=com.docker.stack.namespace=$STACK_NAME" | grep -q .; do
    [ $SECONDS -lt $deadline ] || { echo "the stack's containers are still there" >&2; break; }
    sleep 1
  done
fi
for volume in $(docker volume ls -q --filter "label=com.docker.stack.namespace=$STACK_NAME") $anonymous; do
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    docker volume inspect "$volume" >/dev/null 2>&1 || break # gone with its container
    docker volume rm "$volume" >/dev/null 2>&1 && break
    sleep 1
  done
done
if [ -e "$SUITE_STATE_DIR/swarm-created" ]; then
  echo "leaving the swarm swarm-up.sh made"
  docker swarm leave --force >/dev/null
fi
rm -rf "$SUITE_STATE_DIR"
echo "removed the stack $STACK_NAME"
