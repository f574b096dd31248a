# syntax=docker/dockerfile:1
# The kit-service image: a static-enough binary on distroless, non-root.
# Build: docker build -t kit-service .   Run: docker run -p 8080:8080 -e PORT=8080 kit-service

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY service/Cargo.toml service/Cargo.toml
COPY checks/Cargo.toml checks/Cargo.toml
COPY infra/Cargo.toml infra/Cargo.toml
RUN mkdir -p service/src checks/src infra/src \
    && echo 'fn main() {}' > service/src/main.rs && touch service/src/lib.rs \
    && touch checks/src/lib.rs \
    && echo 'fn main() {}' > infra/src/main.rs && touch infra/src/lib.rs \
    && cargo build --locked --release -p kit-service \
    && rm -rf service/src checks/src infra/src
COPY service service
COPY checks checks
COPY infra infra
RUN touch service/src/lib.rs service/src/main.rs checks/src/lib.rs \
    && cargo build --locked --release -p kit-service \
    && cp target/release/kit-service /kit-service

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /kit-service /usr/local/bin/kit-service
ENV PORT=8080 KIT_LOG_FORMAT=json
EXPOSE 8080
USER nonroot
# Bind all interfaces inside the container; the platform maps the port.
ENTRYPOINT ["/usr/local/bin/kit-service", "serve", "--listen", "0.0.0.0:8080"]
