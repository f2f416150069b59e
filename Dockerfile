# pgbackfill image: `docker build -t pgbackfill .` (checked by hadolint in .ci/deploy).

# ---- Build. The toolchain image matches the Rust line the crate is tested with.
FROM rust:1.95-bookworm AS build
WORKDIR /src

# 1. Dependencies only: the manifests with stub sources. This layer is rebuilt only when
#    Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/throughput.rs \
 && cargo build --release --locked --bin pgbackfill

# 2. The crate itself. Touch the entry points: the copied files may be older than the stub build,
#    and cargo decides freshness by modification time.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin pgbackfill \
 && strip target/release/pgbackfill

# ---- Run: a small Debian image. procps only for `kill`, so `kubectl exec POD -- kill -USR1 1`
# pauses the daemon. TLS roots are compiled into the binary (webpki-roots): no ca-certificates.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends procps=2:4.0.2-3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pgbackfill /usr/local/bin/pgbackfill
COPY jobs/schema.json /usr/share/pgbackfill/schema.json
# 65532: the conventional "nonroot" uid, numeric so runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
EXPOSE 8590
# Exec form: pgbackfill is PID 1 and receives SIGTERM (drain), SIGUSR1/SIGUSR2 (pause/resume) and
# SIGHUP (reload) itself.
ENTRYPOINT ["/usr/local/bin/pgbackfill"]
CMD ["run", "--jobs", "/etc/pgbackfill/jobs"]
