package tokencache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// memShared is a SharedStore in memory for the tests: a MemoryStore with a
// lease, change notifications and a switch that makes it unreachable.
type memShared struct {
	MemoryStore
	mu     sync.Mutex
	leases map[string]int
	owner  int
	subs   map[chan struct{}]bool
	down   bool
}

var errDown = errors.New("connection refused")

func (m *memShared) isDown() bool { m.mu.Lock(); defer m.mu.Unlock(); return m.down }

func (m *memShared) setDown(d bool) { m.mu.Lock(); m.down = d; m.mu.Unlock() }

func (m *memShared) notify() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for c := range m.subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

func (m *memShared) Load(ctx context.Context, key string) (Record, error) {
	if m.isDown() {
		return Record{}, errDown
	}
	return m.MemoryStore.Load(ctx, key)
}

func (m *memShared) CompareAndSwap(ctx context.Context, key string, old uint64, rec Record) (Record, error) {
	if m.isDown() {
		return Record{}, errDown
	}
	r, err := m.MemoryStore.CompareAndSwap(ctx, key, old, rec)
	if err == nil {
		m.notify()
	}
	return r, err
}

func (m *memShared) Delete(ctx context.Context, key string, old uint64) error {
	if m.isDown() {
		return errDown
	}
	return m.MemoryStore.Delete(ctx, key, old)
}

func (m *memShared) Acquire(_ context.Context, key string, ttl time.Duration) (func(context.Context) error, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return nil, errDown
	}
	if m.leases == nil {
		m.leases = map[string]int{}
	}
	if m.leases[key] != 0 {
		return nil, ErrLeaseHeld
	}
	m.owner++
	me := m.owner
	m.leases[key] = me
	return func(context.Context) error {
		m.mu.Lock()
		if m.leases[key] == me {
			delete(m.leases, key)
		}
		m.mu.Unlock()
		m.notify()
		return nil
	}, nil
}

func (m *memShared) Changes(string) (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	m.mu.Lock()
	if m.subs == nil {
		m.subs = map[chan struct{}]bool{}
	}
	m.subs[c] = true
	m.mu.Unlock()
	return c, func() { m.mu.Lock(); delete(m.subs, c); m.mu.Unlock() }
}

func (m *memShared) Invalidate(ctx context.Context, key string, token Secret) error {
	if m.isDown() {
		return errDown
	}
	rec, err := m.MemoryStore.Load(ctx, key)
	if err != nil || rec.AccessToken != token {
		return nil
	}
	rec.AccessToken = ""
	_, err = m.MemoryStore.CompareAndSwap(ctx, key, rec.Generation, rec)
	m.notify()
	return err
}

// replicas are Sources sharing one store, as proxies in several pods.
func replicas(t *testing.T, n int, idp *fakeIdP, store *memShared, mod func(*Config)) []*Source {
	var out []*Source
	for i := range n {
		out = append(out, newSource(t, idp, func(c *Config) {
			c.Name = fmt.Sprintf("replica%d", i) // names may differ; the key does not
			c.Shared, c.StoreKey = store, "entry-key"
			if mod != nil {
				mod(c)
			}
		}))
	}
	return out
}

func TestSharedOneRequestForAll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{gate: make(chan struct{})}
		rs := replicas(t, 3, idp, &memShared{}, nil)
		var wg sync.WaitGroup
		got := make([]string, 30)
		for i := range got {
			wg.Go(func() {
				tok, err := rs[i%3].Token(context.Background())
				if err != nil {
					t.Error(err)
				}
				got[i] = tok
			})
		}
		synctest.Wait()
		close(idp.gate)
		wg.Wait()
		if n := idp.hits.Load(); n != 1 {
			t.Errorf("%d token requests for 3 replicas, want 1", n)
		}
		for _, g := range got {
			if g != "t1" {
				t.Fatalf("tokens %v, want all t1", got)
			}
		}
		if st := rs[1].Status(); st.Cache != "shared" || st.State != StateValid {
			t.Errorf("status %+v", st)
		}
	})
}

func TestSharedInvalidateOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{}
		rs := replicas(t, 3, idp, &memShared{}, nil)
		for _, r := range rs {
			mustToken(t, r)
		}
		for _, r := range rs {
			r.Invalidate("t1")
		}
		for _, r := range rs {
			if tok := mustToken(t, r); tok != "t2" {
				t.Errorf("after invalidation: %s, want t2", tok)
			}
		}
		if n := idp.hits.Load(); n != 2 {
			t.Errorf("%d token requests; three rejections of one token must cause one renewal (want 2 in all)", n)
		}
	})
}

func TestSharedRotatingRefreshTokenSpentOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		spent := map[string]int{}
		n := 0
		idp := &fakeIdP{reply: func(_ int64, r seen) (int, string) {
			mu.Lock()
			defer mu.Unlock()
			rt := r.form.Get("refresh_token")
			spent[rt]++
			if spent[rt] > 1 {
				return 400, `{"error":"invalid_grant"}`
			}
			n++
			return 200, fmt.Sprintf(`{"access_token":"at%d","token_type":"Bearer","expires_in":120,"refresh_token":"rt%d"}`, n, n)
		}}
		rs := replicas(t, 4, idp, &memShared{}, func(c *Config) { c.Grant = RefreshToken{Token: "rt0"} })
		for _, r := range rs {
			mustToken(t, r)
			r.Start()
		}
		time.Sleep(10 * time.Minute) // several renewals, every replica due at once
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		for rt, c := range spent {
			if c > 1 {
				t.Errorf("refresh token %s sent %d times", rt, c)
			}
		}
		if n < 5 {
			t.Errorf("%d renewals in 10 minutes of 2-minute tokens", n)
		}
		for _, r := range rs {
			if st := r.Status(); st.State != StateValid {
				t.Errorf("%s: %+v", r.Name(), st)
			}
		}
	})
}

func TestSharedStoreDown(t *testing.T) {
	t.Run("client credentials fetch their own", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			idp := &fakeIdP{}
			store := &memShared{}
			rs := replicas(t, 2, idp, store, nil)
			store.setDown(true)
			for _, r := range rs {
				mustToken(t, r)
				if st := r.Status(); st.Cache != "degraded" {
					t.Errorf("cache = %q, want degraded", st.Cache)
				}
			}
			if n := idp.hits.Load(); n != 2 {
				t.Errorf("%d requests; each replica fetches its own while the store is down", n)
			}
			store.setDown(false)
			time.Sleep(rejoinEvery + time.Second)
			rs[0].Invalidate(mustToken(t, rs[0]))
			time.Sleep(DefaultForceInterval)
			mustToken(t, rs[0])
			if st := rs[0].Status(); st.Cache != "shared" {
				t.Errorf("cache = %q after the store came back, want shared", st.Cache)
			}
		})
	})
	t.Run("rotating refresh token not spent", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			idp := &fakeIdP{reply: func(n int64, r seen) (int, string) {
				return 200, fmt.Sprintf(`{"access_token":"at%d","token_type":"Bearer","expires_in":60,"refresh_token":"rt%d"}`, n, n)
			}}
			store := &memShared{}
			rs := replicas(t, 1, idp, store, func(c *Config) { c.Grant = RefreshToken{Token: "rt0"} })
			mustToken(t, rs[0])
			store.setDown(true)
			time.Sleep(2 * time.Minute) // the token expired; renewing would spend a rotating refresh token
			_, err := rs[0].Token(context.Background())
			if err == nil {
				t.Fatal("a rotating refresh token was spent while the shared store was down")
			}
			if n := idp.hits.Load(); n != 1 {
				t.Errorf("%d token requests, want 1", n)
			}
		})
	})
}
