// Package testutil is what shoal's unit tests, end-to-end tests and benchmarks share:
// polling with a deadline instead of sleeping, a shaped link that concurrent downloads share,
// a streaming reverse proxy to put one in front of a registry, and throw-away TLS certificates
// and htpasswd files.
//
// It must never be imported by non-test code, and never mock what the tests can run for real:
// it holds helpers, not fakes.
package testutil
