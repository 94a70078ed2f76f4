package redisstore

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Changes implements tokencache.SharedStore. All of a Store's
// subscriptions share one pub/sub connection, opened on the first call,
// subscribed to every entry's channel under the prefix (PSUBSCRIBE), and
// kept until Close. Deliveries never block: each channel holds one value,
// and further changes merge into it.
//
// When that connection is lost (Redis dies, restarts or stops answering
// pings for two CallTimeouts) every channel handed out is closed: the
// caller polls with Load from then on, and may call Changes again. A
// channel obtained while the connection is down is closed at the next
// failed attempt, or receives a value once it is up again, since changes
// made meanwhile went unannounced. Subscribe before Load, so that a change
// between the two is not missed.
//
// A key not from EntryKey, a Store with ErrKeyMismatch and a closed Store
// give a closed channel.
func (s *Store) Changes(key string) (<-chan struct{}, func()) {
	if !validEntryKey(key) || s.mismatch.Load() {
		return closedChan(), func() {}
	}
	return s.hub.subscribe(s.chgName(key))
}

func closedChan() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// hub fans a Store's pub/sub messages out to its subscribers.
type hub struct {
	s       *Store
	pattern string
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}

	mu      sync.Mutex
	subs    map[string]map[chan struct{}]struct{} // by channel
	started bool
	closed  bool
	up      bool          // the subscription is confirmed
	ps      *redis.PubSub // the current connection, for close
}

func newHub(s *Store) *hub {
	ctx, cancel := context.WithCancel(context.Background())
	return &hub{
		s:       s,
		pattern: globEscape(s.prefix) + "{*}:chg",
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
		subs:    map[string]map[chan struct{}]struct{}{},
	}
}

// globEscape makes a prefix match itself only in a PSUBSCRIBE pattern.
func globEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`*?[]\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func (h *hub) subscribe(channel string) (<-chan struct{}, func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return closedChan(), func() {}
	}
	if !h.started {
		h.started = true
		go h.run()
	}
	c := make(chan struct{}, 1)
	if h.subs[channel] == nil {
		h.subs[channel] = map[chan struct{}]struct{}{}
	}
	h.subs[channel][c] = struct{}{}
	stop := func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		// Gone already if the connection was lost; then c is closed.
		if m := h.subs[channel]; m != nil {
			delete(m, c)
			if len(m) == 0 {
				delete(h.subs, channel)
			}
		}
	}
	return c, stop
}

// notify wakes the subscribers of channel, or all of them.
func (h *hub) notify(channel string, all bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch, m := range h.subs {
		if !all && ch != channel {
			continue
		}
		for c := range m {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
}

// drop closes every subscriber's channel: they poll from now on.
func (h *hub) drop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range h.subs {
		for c := range m {
			close(c)
		}
	}
	clear(h.subs)
}

func (h *hub) close() {
	h.mu.Lock()
	h.closed = true
	h.cancel()
	ps, started := h.ps, h.started
	h.mu.Unlock()
	if ps != nil {
		ps.Close() // unblocks a read in progress
	}
	if started {
		<-h.done
	}
	h.drop()
}

// Reconnection backoff after the pub/sub connection is lost.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 2 * time.Second
)

func (h *hub) run() {
	defer close(h.done)
	backoff := minBackoff
	for {
		err := h.session()
		h.mu.Lock()
		wasUp := h.up
		h.up = false
		h.mu.Unlock()
		h.drop()
		if h.ctx.Err() != nil {
			return
		}
		if wasUp {
			backoff = minBackoff
			h.s.log.Warn("redis change notifications lost; replicas poll the cache until they are back", "error", err)
		}
		select {
		case <-h.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

var errUnexpected = errors.New("unexpected pub/sub reply")

// session subscribes on a new connection and delivers messages until the
// connection fails or stops answering.
func (h *hub) session() error {
	ps := h.s.client.PSubscribe(h.ctx) // no pattern yet: no I/O
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		ps.Close()
		return context.Canceled
	}
	h.ps = ps
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.ps = nil
		h.mu.Unlock()
		ps.Close()
	}()

	timeout := h.s.timeout
	ctx, cancel := context.WithTimeout(h.ctx, timeout)
	err := ps.PSubscribe(ctx, h.pattern)
	cancel()
	if err != nil {
		return err
	}
	msg, err := ps.ReceiveTimeout(h.ctx, timeout)
	if err != nil {
		return err
	}
	if m, ok := msg.(*redis.Subscription); !ok || m.Kind != "psubscribe" {
		return errUnexpected
	}
	h.mu.Lock()
	h.up = true
	h.mu.Unlock()
	// Whatever changed while there was no connection went unannounced.
	h.notify("", true)

	// Nothing heard for a timeout: ping. Nothing heard for another: the
	// server is hung (a read deadline alone cannot tell it from quiet).
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(h.ctx, timeout)
		if err != nil {
			var ne net.Error
			if pinged || !errors.As(err, &ne) || !ne.Timeout() {
				return err
			}
			if err := ps.Ping(h.ctx); err != nil {
				return err
			}
			pinged = true
			continue
		}
		pinged = false
		if m, ok := msg.(*redis.Message); ok {
			h.notify(m.Channel, false)
		}
	}
}
