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
ENTRYPOINT ["wxtoken"]
# Mount a config there (see config.example.toml), or override the command.
CMD ["run", "--config", "/etc/wxtoken/config.toml"]
