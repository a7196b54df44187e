// Package hostsetup points a host's container runtimes at shoal: it merges shoal into
// containerd's hosts.toml files (`shoal setup containerd`) and into dockerd's daemon.json
// (`shoal setup docker`), checks the runtimes' own configuration for the mistakes that make them
// ignore those files, and undoes its edits (`--uninstall`).
//
// Every edit is first computed as a Plan (old bytes, new bytes, a unified diff) so that
// `--dry-run` shows exactly what Apply would write. The package must never drop a user's
// entry: hosts.toml files are edited as text (comments, order and other hosts survive), the
// result is re-read with containerd's own parser (core/remotes/docker/config) and refused unless
// containerd would try shoal first and then every host the user had, in the user's order. The
// first version of a file that shoal replaces is kept as FILE.shoal-backup and is never
// overwritten, so uninstall can give the user's original back.
//
// It never restarts or signals a runtime and never talks to the network.
package hostsetup
