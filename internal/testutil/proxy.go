package testutil

import (
	"net/http"
	"net/http/httputil"
	"net/url"
)

// ReverseProxy forwards every request to target (Host included) and streams response bodies
// as they come (tests look at when a client gets its bytes); modify, if not nil, sees each
// response first. When the client goes away mid-body, ServeHTTP ends with
// panic(http.ErrAbortHandler): wrap it with a deferred count if requests must be counted.
func ReverseProxy(target *url.URL, modify func(*http.Response) error) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = target.Host
		},
		FlushInterval:  -1,
		ModifyResponse: modify,
	}
}
