package guard

import (
	"context"
	"net"
)

// connKey carries the accepted connection in a request's context (Configure's ConnContext).
type connKey struct{}

// Cork holds back the partial segments of the connection that carries ctx's request until
// the returned function runs (TCP_CORK, what nginx's tcp_nopush does around a file): a
// response's headers then leave in one segment with the first bytes of a sendfile'd body
// instead of alone, one packet and one client wake-up fewer per GET. The kernel sends what is
// held after 200 ms at most, so a missed uncork only delays. It does nothing for a connection
// that is not plain TCP (TLS, tests on pipes) or where TCP_CORK does not exist.
func Cork(ctx context.Context) (uncork func()) {
	c, _ := ctx.Value(connKey{}).(*countedConn)
	if c == nil {
		return func() {}
	}
	tc, ok := c.Conn.(*net.TCPConn)
	if !ok || !setCork(tc, true) {
		return func() {}
	}
	return func() { setCork(tc, false) }
}

// connContext puts the connection in its requests' contexts, after the server's own hook.
func connContext(prev func(context.Context, net.Conn) context.Context) func(context.Context, net.Conn) context.Context {
	return func(ctx context.Context, c net.Conn) context.Context {
		if prev != nil {
			ctx = prev(ctx, c)
		}
		return context.WithValue(ctx, connKey{}, c)
	}
}
