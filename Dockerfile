# Builds the single `wxtoken` binary (refresher, simulator, CLI).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wxtoken

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 wxtoken
COPY --from=build /src/target/release/wxtoken /usr/local/bin/wxtoken
USER wxtoken
# Needs [http] listen = "0.0.0.0:9100" (or 127.0.0.1:9100) in the config;
# `wxtoken probe` is a built-in GET, the image has no curl.
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["wxtoken", "probe", "http://127.0.0.1:9100/healthz"]
ENTRYPOINT ["wxtoken"]
# Mount a config there (see config.example.toml), or override the command.
CMD ["run", "--config", "/etc/wxtoken/config.toml"]
