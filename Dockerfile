# shoal's container image: one static Go binary (no cgo, no libc) on distroless/static, which adds
# only CA certificates, tzdata and /etc/passwd entries (nonroot = 65532). No shell, no package
# manager. Build:  docker build --build-arg VERSION=$(git describe --tags --always) -t shoal .
# The build stage needs golang:1.26 and the Go module proxy; the final stage needs only the
# distroless base. A test (e2e/deploy_image_test.go) builds this Dockerfile's final stage FROM
# scratch with a locally built binary, so it runs without pulling any base image.

ARG GO_VERSION=1.26
FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# The test builds the binary with exactly this line (everything after the --mount options).
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/shoal ./cmd/shoal
# The state directory, owned by the runtime user (a named volume copies this ownership).
RUN mkdir -p /out/var/lib/shoal && chown 65532:65532 /out/var/lib/shoal && chmod 0750 /out/var/lib/shoal

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/shoal /usr/local/bin/shoal
COPY --from=build --chown=65532:65532 /out/var/lib/shoal /var/lib/shoal
# In a container the mirror must listen on the container's interface to be published
# (docker run -p 127.0.0.1:5000:5000 keeps it on the host's loopback). Metrics and probes on 9095.
ENV SHOAL_LISTEN=0.0.0.0:5000 \
    SHOAL_METRICS_LISTEN=0.0.0.0:9095 \
    SHOAL_DATA_DIR=/var/lib/shoal
USER 65532:65532
VOLUME ["/var/lib/shoal"]
# 5000 mirror API, 5001 P2P (libp2p TCP), 9095 /metrics, /healthz, /readyz
EXPOSE 5000 5001 5002 9095
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/usr/local/bin/shoal", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/shoal"]
CMD ["daemon"]
