// Package push is the write side of shoal's OCI distribution API: pushes into the cluster-local
// namespace (monolithic and chunked blob uploads, cross-repository mounts, manifests by tag and
// by digest, deletes), and the reads of what was pushed there.
//
// # Names
//
// The local namespace is one registry-like first path element, by default "shoal.local":
// HOST:5000/shoal.local/team/app:v1 is the repository team/app of the local namespace. It has a
// dot, so the mirror's routing already reads it as a registry host, never as a Docker Hub
// repository (docker.io/shoal.local/... cannot be reached through shoal), and ".local" is
// reserved for multicast DNS (RFC 6762), so no public registry answers to it. containerd's
// hosts.toml reaches it as ?ns=shoal.local. The daemon refuses a registries entry with the same
// name, so the namespace never shadows an upstream silently.
//
// # Who may push
//
// Clients in TrustedCIDR (loopback by default) may push anywhere in the namespace. Others need
// an htpasswd login (security.htpasswd) and a rule in Users naming their user and a pattern of
// repositories; everyone else gets 401/403 with an OCI error and nothing is written.
//
// # What it must never do
//
// It never makes a byte visible that was not verified against the digest the client named
// (uploads go through the store's Writer, which commits only on a match), never accepts a
// manifest that references blobs this node does not hold, never lets an upload grow past
// MaxBlobSize, never keeps the temporary data of an abandoned upload past UploadTimeout, and
// never forwards a push anywhere: what is pushed to the local namespace stays in the cluster.
package push
