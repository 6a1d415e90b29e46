# syntax=docker/dockerfile:1
# One image for the pulseline services; the compose file and the ECS task definitions
# pick the binary (`pulseline-gateway`, `pulseline-relay`) as the container command.
# The processor, sink and query-api binaries are added here when they exist.
#
# The image defines no HEALTHCHECK: each binary has its own notion of health, so the
# checks live with the services (docker-compose.kafka.yml, terraform/ecs.tf).
#checkov:skip=CKV_DOCKER_2:health checks are per service (compose, ECS), not per image

FROM rust:1.95-bookworm AS builder
# cmake builds the librdkafka bundled by rdkafka (feature cmake-build); libssl-dev for
# rdkafka's ssl and sqlx's native-tls; libsasl2-dev for librdkafka's SASL support.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake libssl-dev libsasl2-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds (a clean release build of
# the workspace takes a long while); the binaries are copied out of the cached target/.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pulseline-ingest-gateway --bins \
    && mkdir -p /out \
    && cp target/release/pulseline-gateway target/release/pulseline-relay /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 libsasl2-2 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pulseline \
    && useradd --system --uid 10001 --gid pulseline --no-create-home --shell /usr/sbin/nologin pulseline
COPY --from=builder /out/pulseline-gateway /out/pulseline-relay /usr/local/bin/
USER 10001:10001
EXPOSE 8080
ENV RUST_LOG=info
CMD ["pulseline-gateway"]
