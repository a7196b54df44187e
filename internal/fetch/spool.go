package fetch

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"

	"github.com/shoal-mirror/shoal/internal/ocierr"
	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/store"
)

// Opener opens a blob from a remote source at an offset; size is the blob's full size (-1 if
// the source does not say) and source says where the bytes come from (Upstream, Peer or
// Designated).
type Opener func(ctx context.Context, offset int64) (rc io.ReadCloser, size int64, source Source, err error)

// Ref names the repository a blob is fetched for: where the upstream is asked for it.
type Ref struct {
	Registry string // upstream registry host, canonical ("docker.io")
	Repo     string // repository on it, normalised ("library/alpine")
}

// Fill is one download of a blob into the store. Every client that wants the blob while it is
// in flight reads the same temp file as it grows; nobody downloads it twice.
//
// What a reader may see depends on where the bytes came from. The final byte of any download is
// held back until the digest is verified, so no reader ever gets a complete-looking blob with
// wrong bytes. Bytes from a peer are held back from this node's own clients until the whole blob
// is verified (peers of this node may follow them, since they verify for themselves): if a peer
// lied, the fill starts again from other sources and the clients never notice. With
// p2p.verify_before_serving off, clients get peer bytes as they arrive (eager readers) and a
// restart cuts those that were handed peer bytes: they retry, and get verified bytes.
type Fill struct {
	d   digest.Digest
	ref Ref // the request that started it: where to refetch from

	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever written/done change
	size    int64         // -1 until known
	written int64
	done    bool
	err     error // set with done when the fill failed
	// verified: all bytes are in and hash to the digest. Readers may then have every byte,
	// even if making the blob durable (Commit) fails afterwards.
	verified bool
	// peerFrom is the offset of the first byte that came from a peer (-1: none yet).
	peerFrom int64
	// known is the blob's size as a manifest's descriptor gave it (-1: no manifest seen);
	// the download may not differ from it (blobsize.go).
	known    int64
	restarts int // attempts discarded after a digest mismatch
	// cur is the stream the fill reads now, fromPeer whether a peer sends it (leavePeer).
	cur       io.Reader
	fromPeer  bool
	lastByte  time.Time // when cur opened or last sent bytes
	w         *store.Writer
	discarded []*store.Writer // writers of refills, closed with the last reference
	refs      int             // fill goroutine + readers holding w
	started   chan struct{}
	startOnce sync.Once
	sources   []Source // where the bytes came from, in order (a resume may switch source)
}

// Sources returns where the fill's bytes came from, in order.
func (f *Fill) Sources() []Source {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Source(nil), f.sources...)
}

// Ref is the repository the download was started for.
func (f *Fill) Ref() Ref { return f.ref }

// ReadPrefixAt reads bytes the download has written (the store's temporary file), for a caller
// that re-hashes what it already sent before it goes on from another source.
func (f *Fill) ReadPrefixAt(p []byte, off int64) (int, error) {
	return f.currentWriter().ReadAt(p, off)
}

// spool de-duplicates downloads per digest. It owns the fills' lifetime.
type spool struct {
	store   *store.Store
	log     *slog.Logger
	timeout time.Duration // bound on one fill, which may outlive the client who started it
	retries int           // resumes (Range) after a broken upstream stream
	refills int           // fresh starts after peers sent bytes that did not verify
	maxBlob int64         // store.max_blob_size: no download grows past it (0: no bound)
	sizes   *sizeMemo     // descriptor sizes from the manifests seen (blobsize.go)

	mu      sync.Mutex
	fills   map[digest.Digest]*Fill
	bounded map[string]int64 // downloads stopped by their size bound, by reason

	noSpace rate.Sometimes // the out-of-space warning, once a minute
	hooks   hooks
	watch   startWatch // WhenStarted's waiters

	// base is the context of every fill: fills outlive their clients, not the daemon.
	base    context.Context
	abort   context.CancelFunc
	running sync.WaitGroup
}

// shutdown waits for the downloads in flight to finish (completing the blobs clients are
// following, and those nobody waits for any more), and aborts what is left when ctx ends, so
// the store is closed with no half-written content in use.
func (s *spool) shutdown(ctx context.Context) {
	done := make(chan struct{})
	go func() { s.running.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	s.mu.Lock()
	n := len(s.fills)
	s.mu.Unlock()
	s.log.Warn("shutdown: aborting downloads still in flight", "count", n)
	s.abort()
	<-done
}

// lookup returns the fill in flight for d with a reference held, or nil.
func (s *spool) lookup(d digest.Digest) *Fill {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.fills[d]
	if !ok {
		return nil
	}
	f.mu.Lock()
	f.refs++
	f.mu.Unlock()
	return f
}

// hooks are what the spool tells its owner (fetch.go): each may be nil.
type hooks struct {
	// onMismatch hears of fills whose bytes did not hash to the digest; it reports whether a
	// peer was involved (and banned), in which case the fill starts again.
	onMismatch func(*Fill) bool
	// onFilled hears of fills that were verified and committed (to advertise them).
	onFilled func(*Fill)
	// onStarted hears of fills whose first source answered: peers may follow them from now
	// on. onFailed hears of fills that ended without content.
	onStarted, onFailed func(*Fill)
}

func newSpool(st *store.Store, log *slog.Logger, maxBlob int64, h hooks) *spool {
	base, abort := context.WithCancel(context.Background())
	return &spool{store: st, log: log, maxBlob: maxBlob, hooks: h, timeout: 2 * time.Hour, retries: 3, refills: maxPeersPerLookup, fills: map[digest.Digest]*Fill{},
		sizes: newSizeMemo(sizeMemoEntries), bounded: map[string]int64{}, noSpace: rate.Sometimes{Interval: time.Minute}, base: base, abort: abort}
}

// join returns the fill in flight for d (started reports whether this call started it), or
// starts one with open. It returns a nil fill when the blob was committed meanwhile: the
// caller then reads it from the store. The returned fill holds a reference the caller must
// release.
func (s *spool) join(ctx context.Context, ref Ref, d digest.Digest, open Opener) (f *Fill, started bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.fills[d]; ok {
		f.mu.Lock()
		f.refs++
		f.mu.Unlock()
		return f, false, nil
	}
	// A fill leaves the map only after its commit, so a miss here and in the store means
	// nobody has the blob: no second download can start for committed content.
	if _, err := s.store.Stat(ctx, d); err == nil {
		return nil, false, nil
	}
	w, err := s.store.Writer(ctx, d, "")
	if err != nil {
		return nil, false, err
	}
	known, ok := s.sizes.size(d)
	if !ok {
		known = -1
	}
	f = &Fill{d: d, ref: ref, changed: make(chan struct{}), size: -1, peerFrom: -1, known: known, w: w, refs: 2, started: make(chan struct{})}
	s.fills[d] = f
	s.running.Add(1)
	go s.run(ctx, f, open)
	return f, true, nil
}

func (s *spool) run(reqCtx context.Context, f *Fill, open Opener) {
	defer s.running.Done()
	// The fill keeps the values of the request that started it (the access log's notes) but
	// not its cancellation: it outlives that client, bounded by the timeout and shutdown.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(reqCtx), s.timeout)
	defer cancel()
	defer context.AfterFunc(s.base, cancel)()
	var err error
	retracted := 0
	for attempt := 0; ; attempt++ {
		err = s.copy(ctx, f, open)
		if err == nil {
			err = f.currentWriter().Check(f.written)
		}
		var be *boundError
		if errors.As(err, &be) {
			s.noteBound(f.ref, f.d, f.Sources(), be)
		}
		if errors.Is(err, p2p.ErrRetracted) && retracted < maxRetractions {
			retracted++
			attempt-- // not a lie of the peer that told us: it does not use up the refills
			// The peer we followed took back what it sent (its source lied): discard it all
			// and start again; the peer only passed the bytes on, so it is not banned.
			s.log.Info("the peer this download followed retracted its bytes; starting again from other sources", "digest", f.d, "err", err)
			if err = s.restart(ctx, f); err != nil {
				break
			}
			continue
		}
		// Wrong bytes, or too many, mean a lying peer when one took part: ban it, start again.
		if !(errors.Is(err, store.ErrDigestMismatch) || be != nil) || attempt >= s.refills || s.hooks.onMismatch == nil || !s.hooks.onMismatch(f) {
			break
		}
		s.log.Warn("download did not verify or broke its size bound; starting again from other sources", "digest", f.d, "err", err)
		if err = s.restart(ctx, f); err != nil {
			break
		}
	}
	if err == nil {
		// Release the last byte now: clients need not wait for the fsync in Commit.
		f.mu.Lock()
		f.verified = true
		f.broadcast()
		f.mu.Unlock()
		err = f.w.Commit(ctx, f.written)
	}
	if err != nil {
		_ = f.w.Abort()
		if errors.Is(err, store.ErrNoSpace) {
			s.noSpace.Do(func() {
				s.log.Warn("store is out of space; serving straight from the upstream", "digest", f.d, "err", err)
			})
		} else if ocierr.IsUpstreamNotFound(err) {
			s.log.Debug("blob not found upstream", "digest", f.d, "err", err)
		} else if !errors.Is(err, ocierr.ErrBlobBound) { // noted above
			s.log.Warn("blob download failed", "digest", f.d, "err", err)
		}
	}
	f.start(0, err) // in case it never started
	f.mu.Lock()
	f.done, f.err = true, err
	f.broadcast()
	f.mu.Unlock()
	s.mu.Lock()
	delete(s.fills, f.d)
	s.mu.Unlock()
	if err == nil && s.hooks.onFilled != nil {
		s.hooks.onFilled(f)
	}
	if err != nil && s.hooks.onFailed != nil {
		s.hooks.onFailed(f)
	}
	f.Release()
}

// restart discards what a fill wrote and begins again at offset 0 with a new writer. Only
// bytes that came before the first peer byte were ever handed to this node's clients, and a
// blob is the same bytes whichever honest source sends it, so their view stays consistent.
func (s *spool) restart(ctx context.Context, f *Fill) error {
	nw, err := s.store.Writer(ctx, f.d, "")
	if err != nil {
		return err
	}
	f.mu.Lock()
	old := f.w
	f.discarded = append(f.discarded, old)
	f.w, f.written, f.peerFrom, f.sources = nw, 0, -1, nil
	f.restarts++
	f.broadcast()
	f.mu.Unlock()
	return old.Abort()
}

// maxRetractions bounds the fresh starts of one download after a peer retracted the bytes it
// sent (see p2p.ErrRetracted): in a tree of followers under a lying node, each level may
// retract once, so this is a few; a peer that keeps retracting cannot keep a download going.
const maxRetractions = 8

// stuckAfter: a peer stream that sent nothing for this long is taken for stuck when this node
// is asked to fetch its blob for the swarm (well under p2p.stall_timeout, which ends it anyway).
const stuckAfter = 2 * time.Second

// leavePeerFor breaks the stream the fill reads if a peer sends it and that stream may lead
// to a dead end, when asker, a peer, asks this node to fetch the blob for the swarm, so that
// the fill resumes from the next source (reporting whether it did). It may when asker is the
// peer that sends it (following on would wait on ourselves), when fetcherGone (the asker
// resumes and the designated fetcher that every copy follows is gone: ours leads there too),
// or when the stream sent nothing for stuckAfter (the peer died or froze). An asker that
// merely disagrees on the designated node, or whose stream broke because a node between it and
// the fetcher went, follows our download while it moves: leaving would start a second upstream
// download.
func (f *Fill) leavePeerFor(asker string, fetcherGone bool) bool {
	f.mu.Lock()
	a, ok := f.cur.(interface{ Abort() })
	from := ""
	if n := len(f.sources); n > 0 {
		from = f.sources[n-1].Peer
	}
	ok = ok && f.fromPeer && (from == asker || fetcherGone || time.Since(f.lastByte) >= stuckAfter)
	f.mu.Unlock()
	if ok {
		a.Abort()
	}
	return ok
}

func (f *Fill) currentWriter() *store.Writer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.w
}

// copy streams the remote blob into the writer, resuming with a Range request when the
// stream breaks.
func (s *spool) copy(ctx context.Context, f *Fill, open Opener) error {
	var lastErr error
	for attempt := 0; attempt <= s.retries; attempt++ {
		rc, size, source, err := open(ctx, f.written)
		if err != nil {
			if attempt == 0 || ctx.Err() != nil {
				f.start(0, err)
				return err
			}
			lastErr = err
			continue
		}
		f.mu.Lock()
		f.sources = append(f.sources, source)
		if source.FromPeer() && f.peerFrom < 0 {
			f.peerFrom = f.written
		}
		f.cur, f.fromPeer, f.lastByte = rc, source.FromPeer(), time.Now()
		f.mu.Unlock()
		if size, err = s.checkAnnounced(f.known, size); err != nil {
			f.mu.Lock()
			f.cur = nil
			f.mu.Unlock()
			rc.Close()
			return err
		}
		if f.start(size, nil) {
			if s.hooks.onStarted != nil {
				s.hooks.onStarted(f)
			}
			s.watch.started(f.d)
		}
		err = s.drain(f, rc)
		f.mu.Lock()
		f.cur = nil
		f.mu.Unlock()
		rc.Close()
		if err == nil {
			return nil
		}
		if errors.Is(err, store.ErrNoSpace) || errors.Is(err, ocierr.ErrBlobBound) || errors.Is(err, p2p.ErrRetracted) || ctx.Err() != nil {
			return err
		}
		lastErr = err
		s.log.Info("stream broke; resuming", "digest", f.d, "offset", f.written, "from", source.String(), "err", err)
	}
	return fmt.Errorf("blob %s: giving up after %d resumes: %w", f.d, s.retries, lastErr)
}

// drain copies r into the fill's writer and publishes the bytes to its readers. It gathers a
// good chunk (at least half of the store's 128 KiB buffer) per write: fewer syscalls and
// wake-ups of followers per byte, and the hasher takes the buffer over without a copy (the
// bytes are copied once, from the socket, and written once). But bytes that arrived never wait
// for more longer than flushAfter: a source that sends a little and pauses (a 1 KiB config, a
// slow link) would otherwise hold them back from followers and clients until it goes on, and a
// peer following this download gives up at its stall bound. See gather.
func (s *spool) drain(f *Fill, r io.Reader) error {
	w := f.currentWriter()
	g := &gather{s: s, f: f, w: w}
	defer g.stop()
	var buf []byte
	for {
		if buf == nil {
			buf = w.Buffer()[:store.BufferSize]
		}
		g.begin(buf)
		n := 0
		var rerr error
		for n < len(buf)/2 && rerr == nil {
			var k int
			k, rerr = r.Read(buf[n:])
			n += k
			if k > 0 && g.arrived(n) != nil {
				break // a flush failed: finish reports it
			}
		}
		kept, err := g.finish(n)
		if err != nil {
			return err
		}
		if !kept {
			buf = nil // the writer took it over
		}
		if rerr == io.EOF {
			if f.size >= 0 && f.written != f.size {
				return fmt.Errorf("stream ended at %d of %d bytes: %w", f.written, f.size, io.ErrUnexpectedEOF)
			}
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// flushAfter bounds how long bytes that arrived wait for more before they are written and
// published: far below any stall bound (seconds), far above the 0.6 ms in which half a buffer
// arrives at 100 MiB/s. A source faster than ~6.4 MiB/s fills its chunks before it fires; one
// that pauses has its bytes published within it. (At 2 ms, three layers sharing a 100 MiB/s
// link flushed about every other chunk: shoal's CPU per GiB rose from 2.6 to 3.9 s.)
const flushAfter = 10 * time.Millisecond

// gather is one drain's chunk being read: the drain reads into buf and writes it whole (the
// writer takes the buffer over); a timer, armed when bytes arrive, writes what arrived so far
// if the gathering takes longer than flushAfter, while the drain's Read blocks on buf's tail.
// mu orders the two writers: bytes reach the writer in order, each once.
type gather struct {
	s *spool
	f *Fill
	w *store.Writer

	mu         sync.Mutex
	buf        []byte
	n, flushed int       // bytes read into buf; of them, written by the timer
	armed      bool      // the timer runs for bytes not yet written
	at         time.Time // when the last bytes were read: the fill's lastByte once written
	err        error     // the timer's write failed
	stopped    bool
	t          *time.Timer
}

func (g *gather) begin(buf []byte) {
	g.mu.Lock()
	g.buf, g.n, g.flushed = buf, 0, 0
	g.mu.Unlock()
}

// arrived records that buf[:n] was read, arms the timer for them, and returns a failed flush.
func (g *gather) arrived(n int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n, g.at = n, time.Now()
	if !g.armed && g.err == nil {
		g.armed = true
		if g.t == nil {
			g.t = time.AfterFunc(flushAfter, g.flush)
		} else {
			g.t.Reset(flushAfter)
		}
	}
	return g.err
}

// flush runs on the timer: it writes and publishes what was read and not yet written. The
// drain may meanwhile be reading into buf[n:], which flush does not touch.
func (g *gather) flush() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed = false
	if g.stopped || g.err != nil || g.flushed >= g.n {
		return
	}
	if err := g.write(g.buf[g.flushed:g.n], false); err != nil {
		g.err = err
		return
	}
	g.flushed = g.n
}

// finish writes buf[:n] that the timer did not: the whole buffer, handed over without a copy,
// when the timer wrote nothing; else the rest is copied and the buffer kept for the next
// chunk (kept), so that a slow source costs no new buffer per chunk.
func (g *gather) finish(n int) (kept bool, err error) {
	if g.t != nil {
		g.t.Stop()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed = false
	if g.err != nil {
		return false, g.err
	}
	buf, from := g.buf, g.flushed
	g.buf, g.n, g.flushed = nil, 0, 0
	switch {
	case n == from:
		return true, nil
	case from == 0:
		return false, g.write(buf[:n], true)
	}
	return true, g.write(buf[from:n], false)
}

// write writes p (taking it over if own) and publishes it to the fill's readers; g.mu is held.
func (g *gather) write(p []byte, own bool) error {
	f := g.f
	if err := g.s.overBound(f, f.size, f.written, len(p)); err != nil {
		return err
	}
	var err error
	if own {
		_, err = g.w.WriteBuffer(p)
	} else {
		_, err = g.w.Write(p)
	}
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.written += int64(len(p))
	f.lastByte = g.at // when they came, not when flushed: the stream's silence is timed from it (leavePeerFor)
	f.broadcast()
	f.mu.Unlock()
	return nil
}

// stop ends the timer: no write happens after the drain returned.
func (g *gather) stop() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	if g.t != nil {
		g.t.Stop()
	}
}

// start records the blob's size (or the error that stopped it) the first time it is known,
// and reports whether this call was the first.
func (f *Fill) start(size int64, err error) (first bool) {
	f.startOnce.Do(func() {
		first = true
		f.mu.Lock()
		f.size = size
		if err != nil {
			f.done, f.err = true, err
		}
		f.broadcast()
		f.mu.Unlock()
		close(f.started)
	})
	return first
}

// broadcast wakes every waiting reader; f.mu is held.
func (f *Fill) broadcast() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Release drops one reference; the last one closes the temp files.
func (f *Fill) Release() {
	f.mu.Lock()
	f.refs--
	last := f.refs == 0
	f.mu.Unlock()
	if last {
		_ = f.w.Close()
		for _, w := range f.discarded {
			_ = w.Close()
		}
	}
}

// WaitStarted blocks until the first source answered (size known) or the fill failed.
func (f *Fill) WaitStarted(ctx context.Context) (int64, error) {
	select {
	case <-f.started:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done && f.err != nil && f.written == 0 {
		return 0, f.err
	}
	return f.size, nil
}

// WaitSettled blocks until the fill verified or ended, or ctx ends.
func (f *Fill) WaitSettled(ctx context.Context) {
	for {
		f.mu.Lock()
		settled, ch := f.verified || f.done, f.changed
		f.mu.Unlock()
		if settled {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

// errRetracted cuts an eager reader's download: it was handed bytes of an attempt that did not
// verify (a peer lied), so what it has cannot become the blob.
var errRetracted = errors.New("bytes already sent came from a peer whose download did not verify; retry")

// readAt reads bytes at r.off as they become readable, waiting for them. Until the fill is
// verified, its last byte is never handed out, nor the last byte of the reader's span (a
// Range); for a gated reader (a client of this node), neither is any byte that came from a
// peer. An eager reader (a client of this node, with p2p.verify_before_serving off) gets peer
// bytes too, and errRetracted if the attempt that handed them out is discarded.
func (f *Fill) readAt(p []byte, r *FillReader) (int, error) {
	w, n, peerFrom, err := f.readable(r, int64(len(p)))
	if err != nil {
		return 0, err
	}
	k, err := w.ReadAt(p[:n], r.off)
	r.took(int64(k), peerFrom)
	return k, err
}

// took records that n bytes at r.off were handed out (before r.off moves on); peerFrom is
// the fill's as readable saw it.
func (r *FillReader) took(n, peerFrom int64) {
	if r.eager && peerFrom >= 0 && r.off+n > peerFrom {
		r.tainted = true
	}
	if n > 0 && r.gated {
		r.progress = time.Now()
	}
}

// readable waits until bytes at r.off may be handed to r (the rules are readAt's) and returns
// the writer that holds them, how many (1 to max) and the fill's first peer offset; io.EOF at
// the end.
func (f *Fill) readable(r *FillReader, max int64) (w *store.Writer, n, peerFrom int64, err error) {
	for {
		f.mu.Lock()
		done, err, limit, ch := f.done || f.verified, f.err, f.written, f.changed
		w, peerFrom = f.w, f.peerFrom
		size := f.size
		if r.eager {
			if r.tainted && r.attempt != f.restarts {
				f.mu.Unlock()
				return nil, 0, 0, errRetracted
			}
			r.attempt = f.restarts
		}
		if r.peer && r.attempt != f.restarts {
			// A peer follows this download ungated: what it got of the discarded attempt
			// may be wrong. It is told to discard it.
			f.mu.Unlock()
			return nil, 0, 0, p2p.ErrRetracted
		}
		if f.verified {
			err = nil
		}
		var hold *time.Timer // a gated reader's wait for peer bytes ends (verify_max_wait)
		if !done {
			// The blob's last byte waits for the check. Before it came in, every byte written
			// may go (a source that pauses must not hold back the last one it sent); when the
			// size is unknown, any byte may be the last.
			if size < 0 || limit >= size {
				limit--
			}
			// A range is a whole answer to the client that asked for it: its last byte waits
			// for the check like the blob's own last byte.
			if r.end >= 0 && limit >= r.end {
				limit = r.end - 1
			}
			if r.gated && peerFrom >= 0 && limit > peerFrom {
				waited := time.Since(r.progress)
				switch {
				case r.off < peerFrom: // bytes before the peer's are free to read
					limit = peerFrom
				case r.maxWait > 0 && waited >= r.maxWait:
					// Only the gate holds this client back, and for too long: its own client
					// would give up (containerd cancels a pull without progress). From now on
					// it reads like an eager reader: still never the last byte before the
					// check, and cut if this attempt is discarded.
					r.gated, r.eager, r.attempt = false, true, f.restarts
				default:
					limit = peerFrom
					if r.maxWait > 0 {
						hold = time.NewTimer(r.maxWait - waited)
					}
				}
			}
		}
		f.mu.Unlock()
		if done && err != nil {
			return nil, 0, 0, err
		}
		if off := r.off; off < limit { // never with a hold: the gate left nothing to read
			return w, min(max, limit-off), peerFrom, nil
		}
		if done {
			return nil, 0, 0, io.EOF
		}
		var holdEnds <-chan time.Time
		if hold != nil {
			holdEnds = hold.C
		}
		ctxDone := false
		select {
		case <-ch:
		case <-holdEnds:
		case <-r.ctx.Done():
			ctxDone = true
		}
		if hold != nil {
			hold.Stop()
		}
		if ctxDone {
			return nil, 0, 0, r.ctx.Err()
		}
	}
}

// FillReader reads a fill sequentially from an offset up to an end (exclusive; -1 = to the
// end). A peer's reader is neither gated nor eager (peers verify for themselves); a client of
// this node's is one of the two (see fill).
type FillReader struct {
	ctx      context.Context
	f        *Fill
	off, end int64
	gated    bool
	eager    bool
	peer     bool // a peer's reader: cut with p2p.ErrRetracted when the attempt it reads is discarded
	attempt  int  // eager: the fill attempt it reads
	tainted  bool // eager: it was handed bytes that came from a peer
	// maxWait: a gated reader that got no byte for this long turns eager (0: never);
	// progress is when it last got one (or was made).
	maxWait  time.Duration
	progress time.Time
	// pendingPeer is the fill's first peer offset when the last span was handed out.
	pendingPeer int64
}

// peerReader reads f for a peer, from off to end (the blob's size), ungated: the peer
// verifies the digest itself. If the attempt it reads is discarded (its bytes did not verify),
// it fails with p2p.ErrRetracted, which the peer is told.
func peerReader(ctx context.Context, f *Fill, off, end int64) *FillReader {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &FillReader{ctx: ctx, f: f, off: off, end: end, peer: true, attempt: f.restarts}
}

// ClientReader reads f for a client of this node, from off to end. With verifyFirst, peer
// bytes wait for the digest check, but not beyond maxWait without a byte (0: no limit).
func (f *Fill) ClientReader(ctx context.Context, off, end int64, verifyFirst bool, maxWait time.Duration) *FillReader {
	return &FillReader{ctx: ctx, f: f, off: off, end: end, gated: verifyFirst, eager: !verifyFirst,
		maxWait: maxWait, progress: time.Now()}
}

// SetContext replaces the context the reader's waits end with (a first read bounded by a
// shorter one, then the client's).
func (r *FillReader) SetContext(ctx context.Context) { r.ctx = ctx }

// Offset is where the next read starts.
func (r *FillReader) Offset() int64 { return r.off }

func (r *FillReader) Read(p []byte) (int, error) {
	if r.end >= 0 {
		if r.off >= r.end {
			return 0, io.EOF
		}
		if rem := r.end - r.off; int64(len(p)) > rem {
			p = p[:rem]
		}
	}
	n, err := r.f.readAt(p, r)
	r.off += int64(n)
	return n, err
}

// Span waits for bytes like Read and returns where they are instead of copying them: the fill's
// temporary file, their offset and count (at most max, max > 0). The caller sends them with
// sendfile(2) and reports what went out with Sent; the file stays open while the caller holds
// its reference to the fill.
func (r *FillReader) Span(max int64) (*os.File, int64, int64, error) {
	if r.end >= 0 {
		if r.off >= r.end {
			return nil, 0, 0, io.EOF
		}
		max = min(max, r.end-r.off)
	}
	w, n, peerFrom, err := r.f.readable(r, max)
	if err != nil {
		return nil, 0, 0, err
	}
	r.pendingPeer = peerFrom
	return w.File(), r.off, n, nil
}

// Sent records that n bytes of the last span went out.
func (r *FillReader) Sent(n int64) {
	r.took(n, r.pendingPeer)
	r.off += n
}

// VerifyingReader hashes what passes through and fails at EOF unless the digest matches; like
// a fill, it holds back the final byte until the check passed. It backs the pass-through path
// (store out of space), where no store writer verifies for us.
type VerifyingReader struct {
	r       io.Reader
	h       hash.Hash
	want    digest.Digest
	pend    []byte
	scratch []byte
	eof     bool
}

// NewVerifyingReader verifies r against want; h may already hold the hash of the bytes that
// came before r (a stream switched to pass-through midway), else nil.
func NewVerifyingReader(r io.Reader, want digest.Digest, h hash.Hash) *VerifyingReader {
	if h == nil {
		h = want.Algorithm().Hash()
	}
	return &VerifyingReader{r: r, h: h, want: want, scratch: make([]byte, 64<<10)}
}

func (v *VerifyingReader) Read(p []byte) (int, error) {
	for len(v.pend) <= 1 && !v.eof {
		n, err := v.r.Read(v.scratch)
		v.h.Write(v.scratch[:n])
		v.pend = append(v.pend, v.scratch[:n]...)
		switch {
		case err == io.EOF:
			if got := digest.NewDigest(v.want.Algorithm(), v.h); got != v.want {
				return 0, fmt.Errorf("%w: got %s, want %s", store.ErrDigestMismatch, got, v.want)
			}
			v.eof = true
		case err != nil:
			return 0, err
		}
	}
	avail := len(v.pend)
	if !v.eof {
		avail--
	}
	if avail == 0 {
		return 0, io.EOF
	}
	n := copy(p, v.pend[:avail])
	v.pend = append(v.pend[:0], v.pend[n:]...)
	return n, nil
}
