# Sourced by compose-test.sh and swarm-test.sh: how a step is reported, and the host ports
# the stack under test publishes. The sourcing script sets TEST_NAME first.

passed=0
step() { echo "--- $*"; }
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { echo "FAILED: $*" >&2; echo "$TEST_NAME: $passed passed, 1 failed"; exit 1; }

# Docker publishes the ports itself, so these are free ports picked by the OS a moment ago:
# exports FILE_SERVICE_PORT … LOGGER_SERVICE_PORT, which the compose and stack files read.
pick_service_ports() {
  read -r FILE_SERVICE_PORT RANDOM_SERVICE_PORT STREAMING_SERVICE_PORT AUTH_SERVICE_PORT LOGGER_SERVICE_PORT < <(
    python3 -c 'import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])'
  )
  export FILE_SERVICE_PORT RANDOM_SERVICE_PORT STREAMING_SERVICE_PORT AUTH_SERVICE_PORT LOGGER_SERVICE_PORT
}

# Containers that were replaced or removed during a test (a restart, Swarm's rolling update)
# leave the anonymous volumes the image declares for its data folders. remember_volumes
# notes the volumes there before the test; remove_new_volumes, at clean-up, removes every
# volume made since that nothing uses any more.
remember_volumes() { docker volume ls -q | sort >"$work/volumes-before"; }
remove_new_volumes() {
  [ -f "$work/volumes-before" ] || return 0
  comm -13 "$work/volumes-before" <(docker volume ls -q --filter dangling=true | sort) \
    | xargs -r docker volume rm >/dev/null 2>&1 || true
}
