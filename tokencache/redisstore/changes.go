package redisstore

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Changes implements tokencache.SharedStore. All of a Store's
// subscriptions share one pub/sub connection, opened on the first call and
// kept until Close; the first subscriber of an entry SUBSCRIBEs to its
// channel (plain channels, not a pattern, so that an ACL's &PREFIX* allows
// them). Deliveries never block: each channel holds one value, and further
// changes merge into it. Subscribe before Load: when Redis confirms a new
// subscription its subscribers get a value, so a change between the
// Changes call and the subscription taking effect is not missed.
//
// When the connection is lost (Redis dies, restarts or does not answer a
// ping within CallTimeout) every channel handed out is closed: the caller
// polls with Load from then on, and may call Changes again. A channel
// obtained while the connection is down is closed at the next failed
// attempt, or gets a value once the connection is back, since changes made
// meanwhile went unannounced.
//
// Changes may block for up to CallTimeout to send SUBSCRIBE. A key not
// from EntryKey, a Store with ErrKeyMismatch and a closed Store give a
// closed channel.
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
	s      *Store
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	subs    map[string]map[chan struct{}]struct{} // by channel
	started bool
	closed  bool
	up      bool          // the connection answered
	ps      *redis.PubSub // the current connection
	// subscribed are the channels SUBSCRIBEd on ps. A channel whose last
	// subscriber stops stays subscribed until the connection is renewed:
	// an UNSUBSCRIBE racing a new subscriber's SUBSCRIBE could leave the
	// latter deaf, and a few idle channels cost nothing.
	subscribed map[string]bool
}

func newHub(s *Store) *hub {
	ctx, cancel := context.WithCancel(context.Background())
	return &hub{
		s:      s,
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
		subs:   map[string]map[chan struct{}]struct{}{},
	}
}

func (h *hub) subscribe(channel string) (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return closedChan(), func() {}
	}
	if !h.started {
		h.started = true
		go h.run()
	}
	if h.subs[channel] == nil {
		h.subs[channel] = map[chan struct{}]struct{}{}
	}
	h.subs[channel][c] = struct{}{}
	ps := h.ps
	send := ps != nil && !h.subscribed[channel]
	if send {
		h.subscribed[channel] = true
	}
	h.mu.Unlock()
	if send {
		// A failed write breaks the connection; the session notices and
		// closes c with the others.
		ctx, cancel := context.WithTimeout(h.ctx, h.s.timeout)
		ps.Subscribe(ctx, channel)
		cancel()
	}
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
			h.s.log.Warn("redis change notifications lost; waiting replicas poll the cache until they are back", "error", err)
		}
		select {
		case <-h.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// session opens a connection, subscribes to the channels that have
// subscribers, and delivers messages until the connection fails or stops
// answering.
func (h *hub) session() error {
	ps := h.s.client.Subscribe(h.ctx) // no channels: no I/O yet
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		ps.Close()
		return context.Canceled
	}
	h.ps = ps
	h.subscribed = map[string]bool{}
	channels := make([]string, 0, len(h.subs))
	for ch := range h.subs {
		channels = append(channels, ch)
		h.subscribed[ch] = true
	}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.ps = nil
		h.mu.Unlock()
		ps.Close()
	}()

	timeout := h.s.timeout
	ctx, cancel := context.WithTimeout(h.ctx, timeout)
	var err error
	if len(channels) > 0 {
		err = ps.Subscribe(ctx, channels...)
	} else {
		err = ps.Ping(ctx)
	}
	cancel()
	if err != nil {
		return err
	}
	if _, err := ps.ReceiveTimeout(h.ctx, timeout); err != nil {
		return err
	}
	h.mu.Lock()
	wasDown := !h.up
	h.up = true
	h.mu.Unlock()
	if wasDown {
		// Whatever changed while there was no connection went unannounced.
		h.notify("", true)
	}

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
		switch m := msg.(type) {
		case *redis.Message:
			h.notify(m.Channel, false)
		case *redis.Subscription:
			// A new subscription took effect: what changed before it
			// went unannounced.
			if m.Kind == "subscribe" {
				h.notify(m.Channel, false)
			}
		}
	}
}
