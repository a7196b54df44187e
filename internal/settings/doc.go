// Package settings is the machinery behind shoal's settings table: one entry per configuration
// key (Setting: key, default, help, flag, reloadable, a pointer to its field) and, made from a
// table of them, the YAML decoding with line-numbered errors, the values CLI flags and SHOAL_*
// variables set, the defaults file (`shoal config default`), the reference table of
// docs/configuration.md, the JSON schema of the Helm chart's `config` value and the list of
// keys a reload cannot change. The table itself and the configuration struct are daemon's
// (daemon/config.go).
//
// It must never:
//   - accept a key the table does not declare, or a field of a registry entry its type has no
//     yaml tag for (a misspelt password_file must not pass as "no credentials");
//   - leave a value half-set: a value of the wrong type leaves the old one;
//   - report an error on more than one line, or without the key (or flag) it is about;
//   - know what a setting means: checks of values belong to the packages that use them
//     (their Validate), not here.
package settings
