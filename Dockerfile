# syntax=docker/dockerfile:1

# oauthproxy's container image: one static binary on distroless, run as a
# non-root user, fit for a read-only root file system.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t oauthproxy .
#   docker run --read-only -v ./config.yaml:/etc/oauthproxy/config.yaml:ro oauthproxy
#
# docs/kubernetes.md explains the choices; cmd/oauthproxy/deploy_test.go
# runs the build command below and checks ports, user and paths against
# the binary's defaults, so keep its RUN line one `go build` command.

ARG GO_VERSION=1.26

# The build runs on the builder's platform and cross-compiles (buildx
# --platform linux/amd64,linux/arm64): no emulation, and the binary is
# pure Go anyway.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
# Modules first: this layer stays cached until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# CGO_ENABLED=0: a static binary, which the libc-less final image needs.
# -trimpath: no build paths in the binary (reproducible, nothing of the
# builder's file system). -s -w: no symbol table or DWARF (smaller;
# panics still print stack traces).
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/oauthproxy ./cmd/oauthproxy
# The final image has no shell to make directories with: make them here.
# /var/lib/oauthproxy is where token stores go (`store:`); a volume mounted
# there starts out owned by the image's user.
RUN mkdir -p /out/etc/oauthproxy /out/var/lib/oauthproxy

# static-debian12: CA certificates, tzdata and /etc/passwd, no libc, no
# shell, no package manager. :nonroot has the user 65532 (nonroot).
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="oauthproxy" \
      org.opencontainers.image.description="Adds OAuth2 tokens to the API calls of software that cannot" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/oauthproxy /oauthproxy
COPY --from=build /out/etc/oauthproxy /etc/oauthproxy
COPY --from=build --chown=65532:65532 /out/var/lib/oauthproxy /var/lib/oauthproxy
# Numeric, not "nonroot": the kubelet can verify runAsNonRoot only for a
# numeric user.
USER 65532:65532
# The proxy (listen, default 127.0.0.1:8080: a sidecar's app talks to
# localhost) and the admin listener (admin_listen: /healthz, /readyz,
# /metrics; manifests set 0.0.0.0:9090 so that probes reach it).
EXPOSE 8080 9090
# No curl in the image: the binary checks itself. It asks $OAUTHPROXY_ADMIN,
# else 127.0.0.1:9090, and gives up after 5 s.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["/oauthproxy", "healthcheck"]
ENTRYPOINT ["/oauthproxy"]
CMD ["run", "-config", "/etc/oauthproxy/config.yaml"]
