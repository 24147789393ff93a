# Build with the Rust image, run on a slim base as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tollgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home tollgate \
    && mkdir -p /var/lib/tollgate && chown tollgate /var/lib/tollgate
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
USER tollgate
VOLUME ["/var/lib/tollgate"]
EXPOSE 8080 8443 9090
# The config must listen on 0.0.0.0 inside the container: see config/tollgate.example.toml.
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:9090/healthz || exit 1
ENTRYPOINT ["tollgate"]
CMD ["serve", "--config", "/etc/tollgate/tollgate.toml"]
