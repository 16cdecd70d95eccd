# The twelve commands of the suite in one image, as one multi-call binary (crates/multicall)
# and a link per command name; docker-compose.yml runs one server per container from it. Base images are build arguments with the official names as defaults.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- manifests -----------------------------------------------------------------------
# Every Cargo.toml of the workspace, with empty sources: what the dependency build needs and
# nothing else. The next stage copies this stage's output, which Docker caches by content,
# so editing a source file does not rebuild the dependencies (and a new crate under crates/
# needs no change here).
FROM ${RUST_IMAGE} AS manifests
WORKDIR /src
COPY . .
RUN mkdir /manifests \
 && cp -r Cargo.toml Cargo.lock build.rs protos /manifests/ \
 && for manifest in crates/*/Cargo.toml; do \
      crate=$(dirname "$manifest"); \
      mkdir -p "/manifests/$crate/src" && cp "$manifest" "/manifests/$crate/" \
      && touch "/manifests/$crate/src/lib.rs" "/manifests/$crate/src/main.rs"; \
    done \
 && mkdir -p /manifests/src && touch /manifests/src/lib.rs

# ---- build ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The image ships binaries without debug info or symbols (local release builds keep their
# line tables for backtraces). Set before the dependency build, which it also applies to, so
# that layer stays cached when only our sources change.
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
COPY --from=manifests /manifests/ ./
RUN cargo build --release --locked --workspace --lib

# Our sources. Their files may be older than the empty stand-ins just built, so touch them:
# cargo decides what to rebuild by modification time. Only the binaries are built.
COPY src src
COPY crates crates
ARG COMMANDS="file_server file_client streaming_server streaming_client random_server random_client auth_server auth_client logger_server logger_client logger_query dev_certs"
# One binary for all twelve commands: each separate binary would carry its own copy of
# tonic, tokio and rustls (twelve stripped binaries made a 102 MB image).
RUN find src crates -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p multicall --bin grpc-suite \
 && mkdir /out \
 && cp target/release/grpc-suite /out/ \
 && for command in $COMMANDS; do ln -s grpc-suite "/out/$command"; done

# ---- root file system ------------------------------------------------------------------
# Only what the image runs: our binary, the shell and tools of the entrypoint and of the
# TLS override's certificate step (sh, id, stat, chmod, cat,
# chown, mountpoint, setpriv), and the shared libraries all of them load, found with ldd.
# A whole Debian system would be 75 MB on its own.
FROM ${RUNTIME_IMAGE} AS rootfs
COPY --from=build /out/ /rootfs/usr/local/bin/
COPY docker/entrypoint.sh /rootfs/usr/local/bin/entrypoint.sh
RUN set -eu; \
    mkdir -p /rootfs/bin /rootfs/tmp /rootfs/etc /rootfs/data/uploaded_files \
      /rootfs/data/streamed_files /rootfs/data/logs_data; \
    chmod 1777 /rootfs/tmp; \
    for tool in sh id stat chown chmod cat mountpoint setpriv; do cp -L "$(command -v "$tool")" /rootfs/bin/; done; \
    for executable in /rootfs/bin/* /rootfs/usr/local/bin/*; do \
      ldd "$executable" 2>/dev/null | grep -o '/[^ ]*' || true; \
    done | sort -u | while read -r library; do cp -L --parents "$library" /rootfs/; done; \
    echo 'app:x:10001:10001::/data:/bin/sh' >/rootfs/etc/passwd; \
    echo 'app:x:10001:' >/rootfs/etc/group; \
    chown -R 10001:10001 /rootfs/data

# ---- runtime -------------------------------------------------------------------------
FROM scratch
COPY --from=rootfs /rootfs/ /
ENV PATH=/usr/local/bin:/bin
WORKDIR /data
VOLUME ["/data/uploaded_files", "/data/streamed_files", "/data/logs_data"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["file_server"]
