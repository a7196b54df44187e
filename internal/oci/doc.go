// Package oci holds what several top-level packages of shoal share about the OCI distribution
// spec: repository names, references, digests, error codes, media types, manifests (read into
// image-spec's types) and platforms (parsed and matched by containerd's rules). It performs no I/O.
//
// It must never accept a name, reference, digest or manifest that the distribution spec or
// image-spec refuses: the callers answer such input with a clear OCI error before any I/O.
package oci
