package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// maxCatalog bounds a catalog answer (a page of repository names).
const maxCatalog = 4 << 20

// Catalog lists a registry's repositories (GET /v2/_catalog?n=N), one page of at most n.
// Registries that do not offer it answer 401, 404 or UNSUPPORTED: those come back as *Error.
func (c *Client) Catalog(ctx context.Context, host string, n int) ([]string, error) {
	reg, err := c.registry(host)
	if err != nil {
		return nil, err
	}
	if e := c.cooldowns.check(reg.host, c.now()); e != nil {
		return nil, e
	}
	u := *reg.endpoint
	u.Path = reg.endpoint.Path + "/v2/_catalog"
	u.RawQuery = url.Values{"n": {strconv.Itoa(n)}}.Encode()
	resp, err := c.doAuthed(withRegistry(ctx, reg), reg, request{method: http.MethodGet, subpath: catalogPath}, &u)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		e := newError(reg.host, resp, c.now())
		e.Message = reg.creds.redact(e.Message)
		return nil, e
	}
	defer resp.Body.Close()
	var body struct {
		Repositories []string `json:"repositories"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxCatalog)).Decode(&body); err != nil {
		return nil, fmt.Errorf("upstream %s: catalog: %w", reg.host, err)
	}
	return body.Repositories, nil
}

// catalogPath marks a catalog request: its token scope is the registry's catalog, not a
// repository's.
const catalogPath = "_catalog"
