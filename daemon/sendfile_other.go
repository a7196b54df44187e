//go:build !linux

package daemon

import (
	"net"
	"os"
)

// sendFile is Linux only (sendfile_linux.go); elsewhere net/http's own copy runs.
func sendFile(net.Conn, *os.File, int64) (int64, bool, error) { return 0, false, nil }
