package upstream

import (
	"encoding/base64"
	"strings"
)

// redact removes the secret from a string an upstream sent back (an error message that
// echoes what it was given), in clear and as the Basic credentials it travelled in, so that
// it cannot reach a log line, an error or a client.
func (c credentials) redact(s string) string {
	if c.secret == "" {
		return s
	}
	for _, v := range []string{c.secret, base64.StdEncoding.EncodeToString([]byte(c.username + ":" + c.secret))} {
		s = strings.ReplaceAll(s, v, "[redacted]")
	}
	return s
}
