#!/bin/sh
# Starts the given command as a non-root user that can write the data folders.
#
# Bind-mounted folders (./uploaded_files …) belong to whoever owns them on the host. If that
# is a regular user, run as that user, so the files the services write stay the host user's.
# If it is root, hand the folder to the image's own user (uid 10001) and run as it.
# Either way the server never runs as root, and `exec` leaves it as PID 1, so SIGTERM from
# `docker stop` reaches it directly.
set -eu

if [ "$(id -u)" != 0 ]; then
  exec "$@"   # Started as a chosen user (docker run --user): nothing to adjust.
fi

owner=
group=
for dir in /data/uploaded_files /data/streamed_files /data/logs_data; do
  mountpoint -q "$dir" || continue
  uid=$(stat -c %u "$dir")
  gid=$(stat -c %g "$dir")
  if [ "$uid" = 0 ]; then
    chown 10001:10001 "$dir"
    uid=10001
    gid=10001
  fi
  owner=${owner:-$uid}
  group=${group:-$gid}
done
exec setpriv --reuid="${owner:-10001}" --regid="${group:-10001}" --clear-groups -- "$@"
