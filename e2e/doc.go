// Package e2e holds shoal's end-to-end tests: the real shoal binary between real clients
// (skopeo, ctr, docker, crane) and real registries (distribution's docker-registry from Debian)
// over loopback. It has no non-test code.
//
// The tests need the tools that .ci/run installs (docker-registry, skopeo, containerd, docker.io,
// apache2-utils, crane) and must run as root (containerd and dockerd). They must never reach an
// address outside 127.0.0.0/8: every upstream, token issuer and fallback server is a loopback
// process started by the test, and clients' own fallbacks point at a closed loopback port.
package e2e
