// Package daemon is the wiring: from one Config it builds every part of a shoal node, in
// order, hands each its collaborators at construction, runs them and stops them. What each
// part does lives in its own package:
//
//   - store/ holds content (Badger index, blob files), upstream/ talks to registries, p2p/ is
//     the libp2p node and DHT;
//   - internal/fetch decides where content comes from (store → download in flight → peers →
//     designated fetcher → upstream) and runs the verified downloads;
//   - internal/mirror is the mirror API clients pull through (with the file endpoints, the
//     doctor's canary and the push namespace's cluster side), internal/guard the access
//     controls in front of it, push/ the pushes;
//   - internal/admin is the operator side: admin API, metrics and probes, the web console;
//   - internal/settings is the settings table's machinery; the table itself and Config are
//     here (config.go), with validation (config.go, security.go, push_config.go, …), the
//     data directory (datadir.go), reload (reload.go) and the periodic doctor (doctor.go).
//
// Dependencies point one way: daemon imports internal/*, never the reverse; internal/admin
// sees the mirror only as an http.Handler and never imports internal/mirror or daemon.
//
// It must never serve content itself (every answer but the health probes comes from
// internal/mirror or internal/admin, behind their checks), let a part reach another except
// through what New handed it, or start serving before every part was built: New fails whole,
// releasing what it opened.
package daemon
