//go:build !linux

package guard

import "net"

// setCork does nothing where TCP_CORK does not exist.
func setCork(*net.TCPConn, bool) bool { return false }
