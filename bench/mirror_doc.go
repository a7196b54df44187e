// Package bench holds shoal's performance measurements against a real upstream
// (distribution's docker-registry) over loopback. It has no non-test code and its benchmarks only
// run when asked for (-bench); see mirror_test.go for how to run them and what they report.
package bench
