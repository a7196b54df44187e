package daemon

import (
	"fmt"
	"time"

	"github.com/shoal-mirror/shoal/push"
)

// pushFile is the `push:` section of the YAML file (push.Config's keys).
type pushFile struct {
	Namespace     *string        `yaml:"namespace"`
	UploadTimeout *time.Duration `yaml:"upload_timeout"`
	AllowDelete   *bool          `yaml:"allow_delete"`
	TagTTL        *time.Duration `yaml:"tag_ttl"`
	LocalReplicas *int           `yaml:"local_replicas"`
	RepairEvery   *time.Duration `yaml:"repair_interval"`
	TrustedCIDR   []string       `yaml:"trusted_cidr"`
	Users         []string       `yaml:"users"`
}

func (f *pushFile) apply(c *push.Config) {
	set(&c.Namespace, f.Namespace)
	set(&c.UploadTimeout, f.UploadTimeout)
	set(&c.AllowDelete, f.AllowDelete)
	set(&c.TagTTL, f.TagTTL)
	set(&c.LocalReplicas, f.LocalReplicas)
	set(&c.RepairInterval, f.RepairEvery)
	if f.TrustedCIDR != nil {
		c.TrustedCIDR = f.TrustedCIDR
	}
	if f.Users != nil {
		c.Users = f.Users
	}
}

// validatePush checks the push keys and that the local namespace shadows no upstream.
func (c *Config) validatePush() error {
	if err := c.Push.Validate(); err != nil {
		return &ConfigError{Key: "push", Err: err}
	}
	if ns := c.Push.Namespace; ns != "" {
		if _, ok := c.Upstream.Registries[ns]; ok || canonicalRegistry(c.DefaultRegistry) == ns {
			return &ConfigError{Key: "push.namespace", Err: fmt.Errorf("%q is also an upstream registry: the local namespace would hide it; pick another name", ns)}
		}
	}
	return nil
}
