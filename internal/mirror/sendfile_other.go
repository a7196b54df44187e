//go:build !linux

package mirror

import (
	"net"
	"os"
)

// sendFile and sendSpans are Linux only (sendfile_linux.go); elsewhere net/http's copy runs.
func sendFile(net.Conn, *os.File, int64) (int64, bool, error) { return 0, false, nil }

func sendSpans(net.Conn, fileSpanner, int64) (int64, bool, error) { return 0, false, nil }
