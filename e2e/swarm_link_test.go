package e2e

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-mirror/shoal/internal/testutil"
)

// shapeLink makes all blob bodies share one link of bytesPerSec (0 = no link limit).
func (p *upstreamProxy) shapeLink(bytesPerSec int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.link = nil
	if bytesPerSec > 0 {
		p.link = testutil.NewLink(float64(bytesPerSec))
	}
}

// listenOn makes the proxy also serve on ip (a port of its own) and returns that URL. Each swarm
// node gets its own, so that every upstream request says which node made it (proxyReq.Local).
func (p *upstreamProxy) listenOn(t *testing.T, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatalf("proxy listener on %s: %v", ip, err)
	}
	go p.srv.Serve(ln) // closed with the proxy (srv.Close closes every listener it serves)
	return "http://" + ln.Addr().String()
}

// upstreamBlobTraffic is what the proxy sent for blob GETs: body bytes in total and per digest,
// and the number of GETs per digest.
type upstreamBlobTraffic struct {
	Bytes    int64
	PerBlob  map[string]int64
	GETs     map[string]int
	Requests []proxyReq
}

// blobTraffic waits (up to timeout) until every request the proxy has seen is finished, then
// sums the blob GETs. A fill that goes on in the background after the clients are done is
// counted too, which is the point: it is upstream traffic the cluster paid for.
func (p *upstreamProxy) blobTraffic(t *testing.T, timeout time.Duration) upstreamBlobTraffic {
	t.Helper()
	err := poll(timeout, nil, func() error {
		for _, r := range p.requests() {
			if !r.Done {
				return errStillRunning{r}
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("upstream requests still running after the pulls: %v", err)
	}
	tr := upstreamBlobTraffic{PerBlob: map[string]int64{}, GETs: map[string]int{}, Requests: p.requests()}
	for _, r := range tr.Requests {
		if r.Method != http.MethodGet || !strings.Contains(r.Path, "/blobs/") {
			continue
		}
		d, _ := blobDigestOf(r.Path)
		tr.Bytes += r.Bytes
		tr.PerBlob[d] += r.Bytes
		tr.GETs[d]++
	}
	return tr
}

type errStillRunning struct{ r proxyReq }

func (e errStillRunning) Error() string {
	return "still running: " + e.r.Method + " " + e.r.Path + " (came in on " + e.r.Local + ")"
}

// TestLinkShaperSharesTheRate checks the fixture itself: two blobs fetched at once over a shaped
// link take about as long as both one after the other (the rate is shared), and the bytes
// counted are the blobs' sizes.
func TestLinkShaperSharesTheRate(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	img := up.Img.Conc // 3 layers of 6 MiB
	p := startUpstreamProxy(t, up.Open.URL)
	const rate = 24 << 20
	p.shapeLink(rate)
	var wg sync.WaitGroup
	start := time.Now()
	for _, l := range img.Layers[:2] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(p.URL + "/v2/" + img.Repo + "/blobs/" + l)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			if _, err := io.Copy(io.Discard, resp.Body); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	want := img.LayerSizes[img.Layers[0]] + img.LayerSizes[img.Layers[1]]
	tr := p.blobTraffic(t, 10*time.Second)
	if tr.Bytes != want {
		t.Errorf("counted %d blob bytes, want %d", tr.Bytes, want)
	}
	// Each blob alone would take 0.25 s at the full rate; sharing the link, both take ~0.5 s.
	if floor := time.Duration(float64(want) / rate * 0.9 * float64(time.Second)); took < floor {
		t.Errorf("two blobs over a %d MiB/s link took %s, want ≥ %s: the link is not shared", rate>>20, took, floor)
	}
	t.Logf("%d bytes over a %d MiB/s shaped link in %s", want, rate>>20, took.Round(time.Millisecond))
}
