// Package ocierr is where errors become OCI distribution error responses: the one
// classification of upstream, store, push and fetch errors into a status and an error code,
// and the one writer of the JSON error body every shoal HTTP surface answers with.
//
// It must never relay an upstream's authentication challenge (shoal holds the credentials, the
// client cannot answer it) and never write after a response's header has gone out.
package ocierr
