package daemon

import (
	"errors"
	"testing"

	"github.com/shoal-mirror/shoal/adminapi"
)

// A cluster pull needs the swarm: without P2P it is refused before anything is fetched, and
// bad selections are usage errors.
func TestAdminClusterPullRefused(t *testing.T) {
	up := newUpstream(t)
	d := startDaemon(t, up, withOps)
	cl := adminFor(t, d)
	for _, tc := range []struct {
		name string
		req  adminapi.PullRequest
		code string
	}{
		{"p2p off", adminapi.PullRequest{Images: []string{"test/app:v1"}, Cluster: true}, adminapi.CodeDisabled},
		{"fraction above 1", adminapi.PullRequest{Images: []string{"test/app:v1"}, Cluster: true, Fraction: 1.5}, adminapi.CodeBadRequest},
		{"nodes and fraction", adminapi.PullRequest{Images: []string{"test/app:v1"}, Cluster: true, Nodes: 3, Fraction: 0.5}, adminapi.CodeBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cl.Pull(t.Context(), tc.req, nil)
			var ae *adminapi.APIError
			if !errors.As(err, &ae) || ae.Code != tc.code {
				t.Fatalf("cluster pull: %v, want API error %s", err, tc.code)
			}
		})
	}
	if n := d.fetch.HistorySize(); n != 0 {
		t.Fatalf("a refused cluster pull fetched something: %d decisions recorded", n)
	}
}
