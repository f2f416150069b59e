# Build: the toolchain image matches the MSRV line the crate is tested with.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pgbackfill \
 && strip target/release/pgbackfill

# Run: a small Debian image, no shell tools needed, as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pgbackfill /usr/local/bin/pgbackfill
COPY jobs/schema.json /usr/share/pgbackfill/schema.json
# 65532: the conventional "nonroot" uid; the manifests also set runAsNonRoot.
USER 65532:65532
EXPOSE 9187
ENTRYPOINT ["/usr/local/bin/pgbackfill"]
CMD ["run", "--jobs", "/etc/pgbackfill/jobs"]
