# The eleven binaries of the suite in one image; docker-compose.yml runs one server per
# container from it. Base images are build arguments with the official names as defaults.
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
      && touch "/manifests/$crate/src/lib.rs"; \
    done \
 && mkdir -p /manifests/src && touch /manifests/src/lib.rs

# ---- build ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY --from=manifests /manifests/ ./
RUN cargo build --release --locked --workspace --lib

# Our sources. Their files may be older than the empty stand-ins just built, so touch them:
# cargo decides what to rebuild by modification time. Only the eleven binaries are built.
COPY src src
COPY crates crates
ARG BINARIES="file_server file_client streaming_server streaming_client random_server random_client auth_server auth_client logger_server logger_client logger_query dev_certs"
RUN find src crates -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --workspace $(printf -- '--bin %s ' $BINARIES) \
 && mkdir /out \
 && for bin in $BINARIES; do cp "target/release/$bin" /out/; done

# ---- runtime -------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
# A fixed non-root user; the entrypoint may adopt the owner of the mounted data folders.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /data --no-create-home app \
 && mkdir -p /data/uploaded_files /data/streamed_files /data/logs_data \
 && chown -R app:app /data
COPY --from=build /out/ /usr/local/bin/
COPY docker/entrypoint.sh /usr/local/bin/entrypoint.sh
WORKDIR /data
VOLUME ["/data/uploaded_files", "/data/streamed_files", "/data/logs_data"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["file_server"]
