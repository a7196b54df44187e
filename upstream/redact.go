package upstream

import "strings"

// redact removes the secret from a string an upstream sent back (an error message that
// echoes what it was given), so that it cannot reach a log line, an error or a client.
func (c credentials) redact(s string) string {
	if c.secret == "" || !strings.Contains(s, c.secret) {
		return s
	}
	return strings.ReplaceAll(s, c.secret, "[redacted]")
}
