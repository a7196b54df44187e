package admin

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Requests are counted per route, source and status, with their bytes and durations, however
// often one series repeats and however many series there are.
func TestObserveRequestCountsEverySeries(t *testing.T) {
	t.Parallel()
	m := NewMetrics("test", State{})
	blob := "/v2/library/x/blobs/sha256:" + "ab"
	for range 3 {
		m.ObserveRequest(Request{Path: blob, Status: 200, Bytes: 1 << 20, Source: "store", Duration: time.Millisecond})
	}
	m.ObserveRequest(Request{Path: blob, Status: 404, Source: "", Duration: time.Millisecond})
	m.ObserveRequest(Request{Path: blob, Status: 200, Bytes: 5, Source: "upstream", Duration: time.Millisecond})
	reg := prometheus.NewRegistry() // the request series alone (the state collector needs a store)
	reg.MustRegister(m.requests, m.bytes, m.duration)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	label := func(mt *dto.Metric) string {
		s := ""
		for _, l := range mt.GetLabel() {
			s += l.GetName() + "=" + l.GetValue() + " "
		}
		return s
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			switch mf.GetName() {
			case "shoal_http_requests_total", "shoal_http_response_bytes_total":
				got[mf.GetName()+" "+label(mt)] = mt.GetCounter().GetValue()
			case "shoal_http_request_duration_seconds":
				got[mf.GetName()+" "+label(mt)] = float64(mt.GetHistogram().GetSampleCount())
			}
		}
	}
	want := map[string]float64{
		"shoal_http_requests_total route=blob source=store status=200 ":    3,
		"shoal_http_requests_total route=blob source=none status=404 ":     1,
		"shoal_http_requests_total route=blob source=upstream status=200 ": 1,
		"shoal_http_response_bytes_total route=blob source=store ":         3 << 20,
		"shoal_http_response_bytes_total route=blob source=none ":          0,
		"shoal_http_response_bytes_total route=blob source=upstream ":      5,
		"shoal_http_request_duration_seconds route=blob ":                  5,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s= %v, want %v", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("series: %v", got)
	}
}
