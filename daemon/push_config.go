package daemon

import (
	"fmt"

	"github.com/shoal-mirror/shoal/internal/oci"
)

// validatePush checks the push keys and that the local namespace shadows no upstream.
func (c *Config) validatePush() error {
	if err := c.Push.Validate(); err != nil {
		return &ConfigError{Key: "push", Err: err}
	}
	if ns := c.Push.Namespace; ns != "" {
		if _, ok := c.Upstream.Registries[ns]; ok || oci.CanonicalRegistry(c.DefaultRegistry) == ns {
			return &ConfigError{Key: "push.namespace", Err: fmt.Errorf("%q is also an upstream registry: the local namespace would hide it; pick another name", ns)}
		}
	}
	return nil
}
