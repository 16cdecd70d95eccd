#!/usr/bin/env bash
# Makes local stand-ins for the two base images the Dockerfile names, on a machine whose
# Docker engine cannot pull from a registry:
#   - the runtime image (debian:bookworm-slim): a Debian bookworm root file system made with
#     debootstrap from Debian's packages and `docker import`ed under that name;
#   - the build image (rust:1-bookworm): the same system plus gcc, with this machine's Rust
#     toolchain copied in, and the extra CA certificates this machine trusts (so cargo in the
#     build reaches the registry the way the host does, e.g. through a TLS-inspecting proxy).
# An image that already exists is left alone, so repeated runs cost nothing.
# Needs root (debootstrap, chroot) and the debootstrap package (installed if missing).
set -euo pipefail

RUNTIME_IMAGE=${RUNTIME_IMAGE:-debian:bookworm-slim}
BUILD_IMAGE=${BUILD_IMAGE:-rust:1-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if have_image "$RUNTIME_IMAGE" && have_image "$BUILD_IMAGE"; then
  echo "base images present: $RUNTIME_IMAGE, $BUILD_IMAGE"
  exit 0
fi

if ! command -v debootstrap >/dev/null; then
  echo "installing debootstrap from Debian's packages"
  apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
fi

work=$(mktemp -d /var/tmp/base-images.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

echo "debootstrap bookworm (minbase) from $MIRROR"
debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log"; exit 1; }

# Trim what a container never uses.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

if ! have_image "$RUNTIME_IMAGE"; then
  echo "importing $RUNTIME_IMAGE"
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$RUNTIME_IMAGE" >/dev/null
fi

if ! have_image "$BUILD_IMAGE"; then
  echo "adding gcc and this machine's Rust toolchain for $BUILD_IMAGE"
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  chroot "$rootfs" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive chroot "$rootfs" \
    apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
  fi

  # rustc finds its standard library relative to itself (bin/../lib), so the toolchain's
  # bin and lib go side by side under /usr/local/cargo, as in the official image.
  sysroot=$(rustc --print sysroot)
  mkdir -p "$rootfs/usr/local/cargo/bin" "$rootfs/usr/local/cargo/lib"
  cp -a "$sysroot/bin/rustc" "$sysroot/bin/cargo" "$rootfs/usr/local/cargo/bin/"
  cp -a "$sysroot/lib/." "$rootfs/usr/local/cargo/lib/"
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'CMD ["bash"]' - "$BUILD_IMAGE" >/dev/null
fi
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^(${RUNTIME_IMAGE}|${BUILD_IMAGE}) "
