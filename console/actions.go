package console

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"

	"github.com/shoal-mirror/shoal/adminapi"
)

// pull warms the cache with one image through the admin API and streams its progress events
// as JSON lines (the page's script draws them). Leaving the page stops the pull; blobs
// already on their way still land in the store.
func (c *Console) pull(w http.ResponseWriter, r *http.Request) {
	image := strings.TrimSpace(r.PostFormValue("image"))
	platform := strings.TrimSpace(r.PostFormValue("platform"))
	if image == "" {
		http.Error(w, "pull: name an image", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	send := func(ev adminapi.PullEvent) {
		_ = enc.Encode(ev)
		_ = rc.Flush()
	}
	_, err := c.admin.Pull(r.Context(), adminapi.PullRequest{Images: []string{image}, Platform: platform}, send)
	if err != nil {
		send(adminapi.PullEvent{Type: adminapi.EventDone, Image: image, Errors: 1, Error: err.Error()})
	}
}

var unsafeFile = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// export streams the offline tarball of one image for one platform as a download.
func (c *Console) export(w http.ResponseWriter, r *http.Request) {
	image := strings.TrimSpace(r.PostFormValue("image"))
	platform := strings.TrimSpace(r.PostFormValue("platform"))
	if image == "" {
		c.fail(w, r, http.StatusBadRequest, fmt.Errorf("export: name an image"))
		return
	}
	body, err := c.admin.Export(r.Context(), adminapi.ExportRequest{Images: []string{image}, Platform: platform})
	if err != nil {
		c.fail(w, r, status(err), fmt.Errorf("export %s: %w", image, err))
		return
	}
	defer body.Close()
	name := unsafeFile.ReplaceAllString(strings.TrimPrefix(image, "docker.io/"), "_")
	if platform != "" {
		name += "_" + unsafeFile.ReplaceAllString(platform, "-")
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.tar"`)
	w.Header().Set("Cache-Control", "no-store")
	if _, err := io.Copy(w, body); err != nil {
		// The headers are out: cut the connection so the browser marks the download failed
		// instead of keeping a short tarball.
		c.log.Warn("console: export broke off", "image", image, "err", err)
		panic(http.ErrAbortHandler)
	}
}
