# capgo-server image: built on the Rust image, run on distroless (glibc, no shell) as non-root.
# No Docker engine runs on this project's development machines: this file is kept correct by
# reading. The binary needs no system libraries beyond glibc (SQLite and the TLS library are
# compiled in).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked \
    && strip target/release/capgo-server

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/capgo-server /usr/local/bin/capgo-server
# The embedded store writes here; mount a volume on it (MongoDB + S3 only stage uploads here).
ENV DATA_DIR=/home/nonroot/data \
    LISTEN_ADDRESS=0.0.0.0
WORKDIR /home/nonroot
USER nonroot
EXPOSE 8000 8001
ENTRYPOINT ["/usr/local/bin/capgo-server"]
