package redisstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

var (
	testKey  = bytes.Repeat([]byte{7}, 32)
	otherKey = bytes.Repeat([]byte{9}, 32)
	testTime = time.Date(2030, 1, 2, 3, 4, 5, 6000, time.UTC)
)

// observed counts Observe's calls as "op/result".
type observed struct {
	mu sync.Mutex
	m  map[string]int
}

func (o *observed) observe(op, result string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[string]int{}
	}
	o.m[op+"/"+result]++
}

func (o *observed) get(k string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.m[k]
}

// newStore returns a Store on r with the test key and a short CallTimeout,
// closed when the test ends. opts may override fields.
func newStore(t *testing.T, r *redisServer, edit func(*Options)) *Store {
	t.Helper()
	o := Options{URL: r.URL(), Key: testKey, CallTimeout: 300 * time.Millisecond, Logger: testLogger(t)}
	if edit != nil {
		edit(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testLogger logs to t, so that a test's log shows only on failure or -v.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, nil))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// rawClient inspects Redis behind the Store's back.
func rawClient(t *testing.T, r *redisServer, opts ...func(*redis.Options)) *redis.Client {
	o := &redis.Options{Addr: r.Addr(), MaxRetries: -1, DisableIdentity: true}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

// fullRecord has every field set.
func fullRecord() tokencache.Record {
	return tokencache.Record{
		RefreshToken: "rt-1",
		AccessToken:  "at-1",
		TokenType:    "Bearer",
		Scopes:       []string{"read", "write"},
		Obtained:     testTime,
		Expiry:       testTime.Add(time.Hour),
		Subject:      "alice@example.com",
		Updated:      testTime.Add(time.Second),
		Failure:      "the token endpoint answered 503",
		RetryAt:      testTime.Add(time.Minute),
	}
}

// diffRecord says how got differs from want, "" when it does not.
func diffRecord(got, want tokencache.Record) string {
	var d []string
	f := func(name string, ok bool, g, w any) {
		if !ok {
			d = append(d, fmt.Sprintf("%s = %v, want %v", name, g, w))
		}
	}
	f("Generation", got.Generation == want.Generation, got.Generation, want.Generation)
	f("RefreshToken", got.RefreshToken == want.RefreshToken, len(got.RefreshToken), len(want.RefreshToken))
	f("AccessToken", got.AccessToken == want.AccessToken, len(got.AccessToken), len(want.AccessToken))
	f("TokenType", got.TokenType == want.TokenType, got.TokenType, want.TokenType)
	f("Scopes", slices.Equal(got.Scopes, want.Scopes), got.Scopes, want.Scopes)
	f("Obtained", got.Obtained.Equal(want.Obtained), got.Obtained, want.Obtained)
	f("Expiry", got.Expiry.Equal(want.Expiry), got.Expiry, want.Expiry)
	f("Subject", got.Subject == want.Subject, got.Subject, want.Subject)
	f("Updated", got.Updated.Equal(want.Updated), got.Updated, want.Updated)
	f("Failure", got.Failure == want.Failure, got.Failure, want.Failure)
	f("RetryAt", got.RetryAt.Equal(want.RetryAt), got.RetryAt, want.RetryAt)
	return strings.Join(d, "; ")
}

func TestRoundTrip(t *testing.T) {
	r := startRedis(t)
	var obs observed
	s := newStore(t, r, func(o *Options) { o.Observe = obs.observe })
	ctx := t.Context()

	refreshOnly := tokencache.Record{RefreshToken: "rt-only", Updated: testTime}
	accessOnly := tokencache.Record{AccessToken: "at-only", TokenType: "Bearer", Expiry: time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)}
	for i, tc := range []struct {
		name string
		rec  tokencache.Record
	}{
		{"every field", fullRecord()},
		{"refresh token only", refreshOnly},
		{"access token only", accessOnly},
		{"failure only", tokencache.Record{Failure: "invalid_client", RetryAt: time.Now().Add(time.Minute).UTC()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := s.EntryKey([]byte(fmt.Sprint("entry ", i)))
			if _, err := s.Load(ctx, key); !errors.Is(err, tokencache.ErrNotFound) {
				t.Fatalf("Load before any write = %v, want ErrNotFound", err)
			}
			got, err := s.CompareAndSwap(ctx, key, 0, tc.rec)
			if err != nil {
				t.Fatalf("CompareAndSwap: %v", err)
			}
			want := tc.rec.Clone()
			want.Generation = 1
			if d := diffRecord(got, want); d != "" {
				t.Errorf("CompareAndSwap returned %s", d)
			}
			loaded, err := s.Load(ctx, key)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if d := diffRecord(loaded, want); d != "" {
				t.Errorf("Load: %s", d)
			}
			// The next write replaces every field, access token included.
			next := tokencache.Record{RefreshToken: "rt-2", Updated: testTime}
			if _, err := s.CompareAndSwap(ctx, key, 1, next); err != nil {
				t.Fatalf("second CompareAndSwap: %v", err)
			}
			loaded, err = s.Load(ctx, key)
			next.Generation = 2
			if err != nil || diffRecord(loaded, next) != "" {
				t.Errorf("Load after the second write: %v %s", err, diffRecord(loaded, next))
			}
		})
	}
	for k, want := range map[string]int{"load/miss": 4, "load/ok": 8, "cas/ok": 8} {
		if got := obs.get(k); got != want {
			t.Errorf("Observe %s counted %d, want %d", k, got, want)
		}
	}
}

func TestCompareAndSwapConflict(t *testing.T) {
	r := startRedis(t)
	var obs observed
	s := newStore(t, r, func(o *Options) { o.Observe = obs.observe })
	ctx := t.Context()
	key := s.EntryKey([]byte("conflict"))
	if _, err := s.CompareAndSwap(ctx, key, 0, fullRecord()); err != nil {
		t.Fatal(err)
	}
	for _, old := range []uint64{0, 2, 7} {
		rec := fullRecord()
		rec.RefreshToken = "lost"
		if _, err := s.CompareAndSwap(ctx, key, old, rec); !errors.Is(err, tokencache.ErrConflict) {
			t.Errorf("CompareAndSwap(old=%d) on generation 1 = %v, want ErrConflict", old, err)
		}
	}
	got, err := s.Load(ctx, key)
	if err != nil || got.Generation != 1 || got.RefreshToken != "rt-1" {
		t.Errorf("after conflicts Load = generation %d, err %v; want generation 1 and the first refresh token", got.Generation, err)
	}
	if n := obs.get("cas/conflict"); n != 3 {
		t.Errorf("Observe cas/conflict = %d, want 3", n)
	}
}

// TestConcurrentWriters: compare-and-swap in the script is atomic, so
// increments that retry on conflict lose none.
func TestConcurrentWriters(t *testing.T) {
	r := startRedis(t)
	ctx := t.Context()
	a := newStore(t, r, func(o *Options) { o.CallTimeout = 5 * time.Second })
	b := newStore(t, r, func(o *Options) { o.CallTimeout = 5 * time.Second })
	key := a.EntryKey([]byte("counter"))
	const writers, each = 8, 10
	var wg sync.WaitGroup
	for w := range writers {
		s := []*Store{a, b}[w%2]
		wg.Go(func() {
			for range each {
				for {
					cur, err := s.Load(ctx, key)
					if err != nil && !errors.Is(err, tokencache.ErrNotFound) {
						t.Error(err)
						return
					}
					var n int
					fmt.Sscan(cur.Subject, &n)
					cur.Subject = fmt.Sprint(n + 1)
					_, err = s.CompareAndSwap(ctx, key, cur.Generation, cur)
					if err == nil {
						break
					}
					if !errors.Is(err, tokencache.ErrConflict) {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	got, err := a.Load(ctx, key)
	if err != nil || got.Subject != fmt.Sprint(writers*each) || got.Generation != writers*each {
		t.Errorf("after %d increments: counter %q, generation %d, err %v", writers*each, got.Subject, got.Generation, err)
	}
}

func TestDelete(t *testing.T) {
	r := startRedis(t)
	s := newStore(t, r, nil)
	ctx := t.Context()
	key := s.EntryKey([]byte("delete"))
	if err := s.Delete(ctx, key, 3); err != nil {
		t.Errorf("Delete of nothing = %v, want nil", err)
	}
	if _, err := s.CompareAndSwap(ctx, key, 0, fullRecord()); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, key, 2); !errors.Is(err, tokencache.ErrConflict) {
		t.Errorf("Delete(old=2) of generation 1 = %v, want ErrConflict", err)
	}
	if _, err := s.Load(ctx, key); err != nil {
		t.Errorf("Load after a refused Delete: %v", err)
	}
	if err := s.Delete(ctx, key, 1); err != nil {
		t.Errorf("Delete(old=1): %v", err)
	}
	if _, err := s.Load(ctx, key); !errors.Is(err, tokencache.ErrNotFound) {
		t.Errorf("Load after Delete = %v, want ErrNotFound", err)
	}
}

func TestInvalidate(t *testing.T) {
	r := startRedis(t)
	var obs observed
	s := newStore(t, r, func(o *Options) { o.Observe = obs.observe })
	ctx := t.Context()
	for _, tc := range []struct {
		name     string
		token    tokencache.Secret
		dropped  bool
		observed string
	}{
		{"current token", "at-1", true, "invalidate/ok"},
		{"stale token", "at-0", false, "invalidate/conflict"},
		{"empty token", "", false, "invalidate/conflict"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := s.EntryKey([]byte("invalidate " + tc.name))
			before := obs.get(tc.observed)
			if _, err := s.CompareAndSwap(ctx, key, 0, fullRecord()); err != nil {
				t.Fatal(err)
			}
			if err := s.Invalidate(ctx, key, tc.token); err != nil {
				t.Fatalf("Invalidate: %v", err)
			}
			got, err := s.Load(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			want := fullRecord()
			want.Generation = 1
			if tc.dropped {
				want.Generation = 2
				want.AccessToken, want.TokenType, want.Scopes = "", "", nil
				want.Obtained, want.Expiry = time.Time{}, time.Time{}
			}
			if d := diffRecord(got, want); d != "" {
				t.Errorf("after Invalidate: %s", d)
			}
			if obs.get(tc.observed) != before+1 {
				t.Errorf("Observe %s not counted", tc.observed)
			}
			// A writer that read the record before the invalidation
			// cannot put the dropped token back.
			if tc.dropped {
				if _, err := s.CompareAndSwap(ctx, key, 1, fullRecord()); !errors.Is(err, tokencache.ErrConflict) {
					t.Errorf("CompareAndSwap with the generation before Invalidate = %v, want ErrConflict", err)
				}
			}
		})
	}
	t.Run("no record", func(t *testing.T) {
		if err := s.Invalidate(ctx, s.EntryKey([]byte("none")), "at-1"); err != nil {
			t.Errorf("Invalidate of no record = %v, want nil", err)
		}
		if obs.get("invalidate/miss") != 1 {
			t.Errorf("Observe invalidate/miss = %d, want 1", obs.get("invalidate/miss"))
		}
	})
}

// TestExpiry: a record without a refresh token leaves Redis with its
// access token; one with a refresh token stays.
func TestExpiry(t *testing.T) {
	r := startRedis(t)
	s := newStore(t, r, nil)
	raw := rawClient(t, r)
	ctx := t.Context()
	soon := time.Now().Add(time.Hour)
	for _, tc := range []struct {
		name    string
		rec     tokencache.Record
		wantTTL time.Duration // 0: none
	}{
		{"access token only", tokencache.Record{AccessToken: "at", Expiry: soon}, time.Hour},
		{"retry after expiry", tokencache.Record{AccessToken: "at", Expiry: soon, RetryAt: soon.Add(time.Hour)}, 2 * time.Hour},
		{"expired already", tokencache.Record{AccessToken: "at", Expiry: time.Now().Add(-time.Hour)}, minTTL},
		{"refresh token", tokencache.Record{RefreshToken: "rt", AccessToken: "at", Expiry: soon}, 0},
		{"no expiry", tokencache.Record{AccessToken: "at"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := s.EntryKey([]byte(tc.name))
			// A record that had a TTL loses it when it gets a refresh token.
			if _, err := s.CompareAndSwap(ctx, key, 0, tokencache.Record{AccessToken: "x", Expiry: soon}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.CompareAndSwap(ctx, key, 1, tc.rec); err != nil {
				t.Fatal(err)
			}
			ttl, err := raw.PTTL(ctx, s.recName(key)).Result()
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.wantTTL == 0 && ttl != -1*time.Nanosecond && ttl != -1*time.Millisecond:
				t.Errorf("PTTL = %v, want none", ttl)
			case tc.wantTTL != 0 && (ttl > tc.wantTTL || ttl < tc.wantTTL-5*time.Second):
				t.Errorf("PTTL = %v, want about %v", ttl, tc.wantTTL)
			}
		})
	}
}

func TestLease(t *testing.T) {
	r := startRedis(t)
	var obs observed
	a := newStore(t, r, func(o *Options) { o.Observe = obs.observe })
	b := newStore(t, r, nil)
	ctx := t.Context()
	key := a.EntryKey([]byte("lease"))

	release, err := a.Acquire(ctx, key, time.Minute)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if _, err := b.Acquire(ctx, key, time.Minute); !errors.Is(err, tokencache.ErrLeaseHeld) {
		t.Errorf("second Acquire = %v, want ErrLeaseHeld", err)
	}
	if _, err := a.Acquire(ctx, key, time.Minute); !errors.Is(err, tokencache.ErrLeaseHeld) {
		t.Errorf("Acquire by the same Store = %v, want ErrLeaseHeld (a lease has one owner)", err)
	}
	if err := release(ctx); err != nil {
		t.Fatalf("release: %v", err)
	}
	if err := release(ctx); err != nil {
		t.Errorf("second release = %v, want nil", err)
	}
	releaseB, err := b.Acquire(ctx, key, time.Minute)
	if err != nil {
		t.Fatalf("Acquire after release: %v", err)
	}
	// a's stale release must not free b's lease.
	if err := release(ctx); err != nil {
		t.Errorf("stale release = %v", err)
	}
	if _, err := a.Acquire(ctx, key, time.Minute); !errors.Is(err, tokencache.ErrLeaseHeld) {
		t.Errorf("Acquire after a stale release = %v, want ErrLeaseHeld", err)
	}
	if err := releaseB(ctx); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]int{"acquire/ok": 1, "acquire/held": 2, "release/ok": 1, "release/miss": 2} {
		if got := obs.get(k); got != want {
			t.Errorf("Observe %s = %d, want %d", k, got, want)
		}
	}

	t.Run("expiry", func(t *testing.T) {
		const ttl = 200 * time.Millisecond
		start := time.Now()
		if _, err := a.Acquire(ctx, key, ttl); err != nil {
			t.Fatal(err)
		}
		// Redis expires the lease; poll for it, as a waiter would.
		for {
			_, err := b.Acquire(ctx, key, time.Minute)
			if err == nil {
				break
			}
			if !errors.Is(err, tokencache.ErrLeaseHeld) {
				t.Fatal(err)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatal("the lease did not expire")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if el := time.Since(start); el < ttl-10*time.Millisecond {
			t.Errorf("lease taken over after %v, before its ttl %v", el, ttl)
		}
	})

	t.Run("one winner", func(t *testing.T) {
		key := a.EntryKey([]byte("race"))
		var won atomic.Int64
		var wg sync.WaitGroup
		for i := range 20 {
			s := []*Store{a, b}[i%2]
			wg.Go(func() {
				_, err := s.Acquire(ctx, key, time.Minute)
				switch {
				case err == nil:
					won.Add(1)
				case !errors.Is(err, tokencache.ErrLeaseHeld):
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if won.Load() != 1 {
			t.Errorf("%d of 20 concurrent Acquires won, want 1", won.Load())
		}
	})

	if _, err := a.Acquire(ctx, key, 0); err == nil {
		t.Error("Acquire with ttl 0 succeeded")
	}
}

// recv waits for a delivery on c; closed reports a closed channel.
func recv(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case _, ok := <-c:
		if !ok {
			t.Fatalf("%s: channel closed, want a delivery", what)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no delivery in 5s", what)
	}
}

func waitClosed(t *testing.T, c <-chan struct{}, within time.Duration) {
	t.Helper()
	timer := time.After(within)
	for {
		select {
		case _, ok := <-c:
			if !ok {
				return
			}
		case <-timer:
			t.Fatalf("channel not closed within %v", within)
		}
	}
}

// subscribed returns a's channel for key once the hub is subscribed: the
// first subscription wakes its subscribers when it is confirmed.
func subscribed(t *testing.T, s *Store, key string) (<-chan struct{}, func()) {
	t.Helper()
	c, stop := s.Changes(key)
	recv(t, c, "the subscription's confirmation")
	return c, stop
}

func TestChanges(t *testing.T) {
	r := startRedis(t)
	a := newStore(t, r, nil)
	b := newStore(t, r, nil)
	ctx := t.Context()
	key := a.EntryKey([]byte("changes"))
	other := a.EntryKey([]byte("other"))

	c1, stop1 := subscribed(t, b, key)
	c2, stop2 := b.Changes(key)
	defer stop2()
	cOther, stopOther := b.Changes(other)
	defer stopOther()

	steps := []struct {
		name string
		do   func() error
	}{
		{"write", func() error { _, err := a.CompareAndSwap(ctx, key, 0, fullRecord()); return err }},
		{"invalidate", func() error { return a.Invalidate(ctx, key, "at-1") }},
		{"lease release", func() error {
			rel, err := a.Acquire(ctx, key, time.Minute)
			if err != nil {
				return err
			}
			return rel(ctx)
		}},
		{"delete", func() error { return a.Delete(ctx, key, 2) }},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		recv(t, c1, st.name)
		recv(t, c2, st.name)
	}
	// Refused operations announce nothing: after a conflict, the next
	// delivery is the next real write's.
	if _, err := a.CompareAndSwap(ctx, key, 9, fullRecord()); !errors.Is(err, tokencache.ErrConflict) {
		t.Fatal(err)
	}
	stop1()
	if _, err := a.CompareAndSwap(ctx, other, 0, fullRecord()); err != nil {
		t.Fatal(err)
	}
	recv(t, cOther, "a write to the other key")
	if _, err := a.CompareAndSwap(ctx, key, 0, fullRecord()); err != nil {
		t.Fatal(err)
	}
	recv(t, c2, "the write after a conflict")
	select {
	case <-c2:
		t.Error("a refused write or another key's write was delivered")
	default:
	}
	// Deliveries to c2 and c1 happen together under one lock: c1, stopped,
	// got nothing.
	select {
	case <-c1:
		t.Error("a stopped subscription got a delivery")
	default:
	}

	bad, _ := b.Changes("entry-name")
	if _, ok := <-bad; ok {
		t.Error("Changes of a key not from EntryKey delivered instead of closing")
	}
	b.Close()
	waitClosed(t, c2, time.Second)
	closed, _ := b.Changes(key)
	if _, ok := <-closed; ok {
		t.Error("Changes on a closed Store delivered instead of closing")
	}
}

func TestKeyMismatch(t *testing.T) {
	r := startRedis(t)
	ctx := t.Context()
	var obs observed
	a := newStore(t, r, nil)
	fp := []byte("shared entry")
	keyA := a.EntryKey(fp)
	if _, err := a.CompareAndSwap(ctx, keyA, 0, fullRecord()); err != nil {
		t.Fatal(err)
	}
	raw := rawClient(t, r)
	dump := func() map[string]string {
		m := map[string]string{}
		for _, k := range raw.Keys(ctx, "*").Val() {
			m[k] = raw.Dump(ctx, k).Val()
		}
		return m
	}
	before := dump()

	var logs bytes.Buffer
	b := newStore(t, r, func(o *Options) {
		o.Key = otherKey
		o.Observe = obs.observe
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	if b.EntryKey(fp) == keyA {
		t.Fatal("EntryKey does not depend on cache.key")
	}
	if err := b.Ping(ctx); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("Ping with another key = %v, want ErrKeyMismatch", err)
	}
	for _, k := range []string{keyA, b.EntryKey(fp)} {
		if _, err := b.Load(ctx, k); !errors.Is(err, ErrKeyMismatch) {
			t.Errorf("Load = %v, want ErrKeyMismatch", err)
		}
		if _, err := b.CompareAndSwap(ctx, k, 1, fullRecord()); !errors.Is(err, ErrKeyMismatch) {
			t.Errorf("CompareAndSwap = %v, want ErrKeyMismatch", err)
		}
		if err := b.Delete(ctx, k, 1); !errors.Is(err, ErrKeyMismatch) {
			t.Errorf("Delete = %v, want ErrKeyMismatch", err)
		}
		if err := b.Invalidate(ctx, k, "at-1"); !errors.Is(err, ErrKeyMismatch) {
			t.Errorf("Invalidate = %v, want ErrKeyMismatch", err)
		}
		if _, err := b.Acquire(ctx, k, time.Minute); !errors.Is(err, ErrKeyMismatch) {
			t.Errorf("Acquire = %v, want ErrKeyMismatch", err)
		}
	}
	if got := logs.String(); strings.Count(got, "level=ERROR") != 1 || !strings.Contains(got, "cache.key differs") {
		t.Errorf("want one error naming cache.key, logged:\n%s", got)
	}
	if n := obs.get("cas/key_mismatch"); n != 2 {
		t.Errorf("Observe cas/key_mismatch = %d, want 2", n)
	}
	after := dump()
	if len(after) != len(before) {
		t.Errorf("keys before %d, after %d", len(before), len(after))
	}
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s changed", k)
		}
	}
	if _, err := a.Load(ctx, keyA); err != nil {
		t.Errorf("the first replica's Load after the other's attempts: %v", err)
	}

	// Redis lost the key-check record (a restart without persistence):
	// a replica with another key claims it, but the first stored value
	// it reads gives the mismatch away, and it writes nothing after.
	if err := raw.Del(ctx, a.keyCheckName()).Err(); err != nil {
		t.Fatal(err)
	}
	c := newStore(t, r, func(o *Options) { o.Key = otherKey })
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("Ping with the key-check record gone: %v", err)
	}
	if _, err := c.Load(ctx, keyA); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("Load of a value sealed with another key = %v, want ErrKeyMismatch", err)
	}
	if _, err := c.CompareAndSwap(ctx, keyA, 1, fullRecord()); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("CompareAndSwap after a value did not decrypt = %v, want ErrKeyMismatch", err)
	}
	got, err := a.Load(ctx, keyA)
	if err != nil || got.Generation != 1 {
		t.Errorf("the first replica's record: generation %d, %v", got.Generation, err)
	}
}

// TestNothingInClear writes, invalidates, leases and announces with
// canaries in every secret, then reads every key name, value and pub/sub
// message Redis holds or carries.
func TestNothingInClear(t *testing.T) {
	r := startRedis(t)
	ctx := t.Context()
	s := newStore(t, r, nil)
	raw := rawClient(t, r)
	const (
		accessCanary  = "CANARY-ACCESS-7f3a"
		refreshCanary = "CANARY-REFRESH-91bc"
		clientCanary  = "CANARY-CLIENT-ID-55e0"
		subjectCanary = "CANARY-SUBJECT-d41d"
	)
	canaries := []string{accessCanary, refreshCanary, clientCanary, subjectCanary}

	ps := raw.PSubscribe(ctx, "*")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	var msgs []string
	var mu sync.Mutex
	msgDone := make(chan struct{})
	go func() {
		defer close(msgDone)
		for m := range ps.Channel() {
			mu.Lock()
			msgs = append(msgs, m.Channel+" "+m.Payload)
			mu.Unlock()
		}
	}()

	fp := "token_url=https://idp/token client_id=" + clientCanary + " secret_digest=x"
	keys := []string{s.EntryKey([]byte(fp)), s.EntryKey([]byte(fp + " scope=b"))}
	for _, key := range keys {
		rec := tokencache.Record{
			RefreshToken: refreshCanary, AccessToken: accessCanary, TokenType: "Bearer",
			Scopes: []string{"read"}, Expiry: time.Now().Add(time.Hour), Subject: subjectCanary,
		}
		if _, err := s.CompareAndSwap(ctx, key, 0, rec); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Acquire(ctx, key, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Invalidate(ctx, keys[1], accessCanary); err != nil {
		t.Fatal(err)
	}
	if err := s.Invalidate(ctx, keys[0], "stale "+accessCanary); err != nil {
		t.Fatal(err)
	}

	var blob strings.Builder
	iter := raw.Scan(ctx, 0, "*", 0).Iterator()
	n := 0
	for iter.Next(ctx) {
		k := iter.Val()
		n++
		fmt.Fprintf(&blob, "key %q\n", k)
		if !strings.HasPrefix(k, DefaultPrefix) {
			t.Errorf("key %q outside the prefix", k)
		}
		fmt.Fprintf(&blob, "dump %q\n", raw.Dump(ctx, k).Val())
		switch raw.Type(ctx, k).Val() {
		case "string":
			fmt.Fprintf(&blob, "get %q\n", raw.Get(ctx, k).Val())
		case "hash":
			h := raw.HGetAll(ctx, k).Val()
			for f, v := range h {
				fmt.Fprintf(&blob, "field %s %q\n", f, v)
				if !strings.Contains("grad", f) {
					t.Errorf("%s has an unknown field %q", k, f)
				}
			}
		default:
			t.Errorf("%s has type %s", k, raw.Type(ctx, k).Val())
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 5 { // keycheck, 2 records, 2 leases
		t.Errorf("SCAN found %d keys, want 5:\n%s", n, blob.String())
	}
	// The messages arrive after their scripts return; the last write's
	// must be there before the subscription ends.
	if _, err := s.CompareAndSwap(ctx, keys[0], 1, tokencache.Record{RefreshToken: refreshCanary}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := len(msgs)
		mu.Unlock()
		if got >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	ps.Close()
	<-msgDone
	if len(msgs) < 4 {
		t.Errorf("saw %d pub/sub messages, want 4: %q", len(msgs), msgs)
	}
	for _, m := range msgs {
		fmt.Fprintf(&blob, "message %q\n", m)
	}
	all := blob.String()
	for _, c := range canaries {
		for _, form := range []string{c, strings.ToLower(c), fmt.Sprintf("%x", c)} {
			if strings.Contains(all, form) {
				t.Errorf("Redis holds %q in the clear", form)
			}
		}
	}
	if t.Failed() {
		t.Logf("what Redis holds:\n%s", all)
	}
}

// TestScriptsAfterFlush: Redis forgets loaded scripts on restart or
// SCRIPT FLUSH; EVALSHA falls back to EVAL.
func TestScriptsAfterFlush(t *testing.T) {
	r := startRedis(t)
	s := newStore(t, r, nil)
	ctx := t.Context()
	key := s.EntryKey([]byte("flush"))
	if _, err := s.CompareAndSwap(ctx, key, 0, fullRecord()); err != nil {
		t.Fatal(err)
	}
	if err := rawClient(t, r).ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompareAndSwap(ctx, key, 1, fullRecord()); err != nil {
		t.Errorf("CompareAndSwap after SCRIPT FLUSH: %v", err)
	}
}

func TestHungRedis(t *testing.T) {
	r := startRedis(t)
	const callTimeout = 300 * time.Millisecond
	s := newStore(t, r, func(o *Options) { o.CallTimeout = callTimeout })
	ctx := t.Context()
	key := s.EntryKey([]byte("hung"))
	if _, err := s.CompareAndSwap(ctx, key, 0, fullRecord()); err != nil {
		t.Fatal(err)
	}
	c, _ := subscribed(t, s, key)

	r.signal(syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			r.signal(syscall.SIGCONT)
		}
	}()
	for _, tc := range []struct {
		name string
		call func(context.Context) error
	}{
		{"Load", func(ctx context.Context) error { _, err := s.Load(ctx, key); return err }},
		{"CompareAndSwap", func(ctx context.Context) error { _, err := s.CompareAndSwap(ctx, key, 1, fullRecord()); return err }},
		{"Acquire", func(ctx context.Context) error { _, err := s.Acquire(ctx, key, time.Second); return err }},
		{"Invalidate", func(ctx context.Context) error { return s.Invalidate(ctx, key, "at-1") }},
		{"Ping", s.Ping},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := tc.call(context.Background()) // no deadline of the caller's
			el := time.Since(start)
			if err == nil {
				t.Fatal("no error from a stopped Redis")
			}
			if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "timeout") {
				t.Errorf("error %v does not say it timed out", err)
			}
			if !strings.Contains(err.Error(), "redis") {
				t.Errorf("error %q does not name redis", err)
			}
			if el > callTimeout+500*time.Millisecond {
				t.Errorf("returned after %v, want about CallTimeout %v", el, callTimeout)
			}
		})
	}
	// The hub pings, gets no answer, and gives up on the connection.
	waitClosed(t, c, 4*callTimeout+time.Second)

	r.signal(syscall.SIGCONT)
	stopped = false
	waitWorking(t, s, key)
}

// waitWorking polls until s reads key again (the pool has dropped its
// broken connections) and a new subscription is delivered to.
func waitWorking(t *testing.T, s *Store, key string) {
	t.Helper()
	ctx := t.Context()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.Load(ctx, key)
		if err == nil || errors.Is(err, tokencache.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Load still fails 10s after Redis is back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		c, stop := s.Changes(key)
		select {
		case _, ok := <-c:
			stop()
			if ok {
				return // confirmed: the hub is subscribed again
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no subscription 10s after Redis is back")
		}
		if time.Now().After(deadline) {
			t.Fatal("change notifications not back 10s after Redis is")
		}
	}
}

func TestRedisRestart(t *testing.T) {
	r := startRedis(t)
	a := newStore(t, r, nil)
	b := newStore(t, r, nil)
	ctx := t.Context()
	key := a.EntryKey([]byte("restart"))
	c, _ := subscribed(t, b, key)

	r.kill()
	waitClosed(t, c, 5*time.Second)
	if _, err := a.Load(ctx, key); err == nil {
		t.Error("Load with Redis down succeeded")
	}
	c2, _ := b.Changes(key)
	waitClosed(t, c2, 5*time.Second) // closed at the next failed attempt

	r.start()
	waitWorking(t, b, key)
	waitWorking(t, a, key)
	c3, stop := b.Changes(key)
	defer stop()
	if _, err := a.CompareAndSwap(ctx, key, 0, fullRecord()); err != nil {
		t.Fatalf("CompareAndSwap after the restart: %v", err)
	}
	// c3 may hold the (spurious) wake of a resubscription; either way a
	// delivery is there.
	recv(t, c3, "a write after the restart")
	got, err := b.Load(ctx, key)
	if err != nil || got.Generation != 1 {
		t.Errorf("Load after the restart: generation %d, %v", got.Generation, err)
	}
}

func TestAuth(t *testing.T) {
	const password = "s3cret-Pa55word"
	for _, tc := range []struct {
		name    string
		server  []string
		opts    func(r *redisServer, o *Options)
		wantErr bool
	}{
		{"requirepass, Password", []string{"--requirepass", password},
			func(r *redisServer, o *Options) { o.Password = password }, false},
		{"requirepass, password in the URL", []string{"--requirepass", password},
			func(r *redisServer, o *Options) { o.URL = "redis://:" + password + "@" + r.Addr() + "/0" }, false},
		{"requirepass, wrong password", []string{"--requirepass", password},
			func(r *redisServer, o *Options) { o.Password = password + "x" }, true},
		{"requirepass, none given", []string{"--requirepass", password},
			func(r *redisServer, o *Options) {}, true},
		{"ACL user in the URL", aclUser(password),
			func(r *redisServer, o *Options) { o.URL = "redis://alice:" + password + "@" + r.Addr() + "/0" }, false},
		{"ACL user, Username and Password", aclUser(password),
			func(r *redisServer, o *Options) { o.Username, o.Password = "alice", password }, false},
		{"ACL user, wrong password in the URL", aclUser(password),
			func(r *redisServer, o *Options) { o.URL = "redis://alice:" + password + "x@" + r.Addr() + "/0" }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRedis(t, tc.server...)
			s := newStore(t, r, func(o *Options) { tc.opts(r, o) })
			ctx := t.Context()
			key := s.EntryKey([]byte("auth"))
			_, err := s.CompareAndSwap(ctx, key, 0, fullRecord())
			if tc.wantErr {
				if err == nil {
					t.Fatal("CompareAndSwap with wrong credentials succeeded")
				}
				if strings.Contains(err.Error(), password) {
					t.Errorf("error %q holds the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("CompareAndSwap: %v", err)
			}
			c, stop := subscribed(t, s, key)
			defer stop()
			if err := s.Delete(ctx, key, 1); err != nil {
				t.Fatal(err)
			}
			recv(t, c, "delete")
		})
	}
}

func TestBadKeys(t *testing.T) {
	r := startRedis(t)
	s := newStore(t, r, nil)
	ctx := t.Context()
	for _, key := range []string{"", "my-entry", "{my-entry}", s.EntryKey(nil) + "x", "{" + strings.Repeat("!", entryKeyLen-2) + "}"} {
		if _, err := s.CompareAndSwap(ctx, key, 0, fullRecord()); !errors.Is(err, errBadKey) {
			t.Errorf("CompareAndSwap(%q) = %v, want errBadKey", key, err)
		}
		if _, err := s.Load(ctx, key); !errors.Is(err, errBadKey) {
			t.Errorf("Load(%q) = %v, want errBadKey", key, err)
		}
	}
	if n := rawClient(t, r).DBSize(ctx).Val(); n != 0 {
		t.Errorf("Redis holds %d keys after refused calls", n)
	}
}

// aclUser is redis-server's arguments for an ACL user alice, limited to
// the default prefix's keys and channels, with the default user off.
func aclUser(password string) []string {
	return []string{"--user", "alice", "on", ">" + password, "~oauthproxy:*", "&oauthproxy:*", "+@all", "--user", "default", "off"}
}

// TestKeyRotation: replicas whose cache.key was rotated (the old key in
// PreviousKeys) find the records the old key wrote under the same names,
// read them, seal them again with the new key in place (same generation,
// same expiry, nothing announced), claim the key check with the new key,
// and compare the same access-token digests.
func TestKeyRotation(t *testing.T) {
	r := startRedis(t)
	ctx := t.Context()
	raw := rawClient(t, r)
	old := newStore(t, r, nil)
	fp := []byte("shared entry")
	key := old.EntryKey(fp)
	rec := fullRecord()
	rec.Expiry = time.Now().Add(time.Hour)
	rec.RefreshToken = ""
	stored, err := old.CompareAndSwap(ctx, key, 0, rec)
	if err != nil {
		t.Fatal(err)
	}
	name := old.recName(key)
	ttl := raw.PTTL(ctx, name).Val()
	if v := raw.Get(ctx, old.keyCheckName()).Val(); len(v) < 2 || v[1] != mustKeys(t, testKey).cur.id {
		t.Fatal("the key check is not sealed with the old key")
	}
	newID := mustKeys(t, otherKey).cur.id

	var obs observed
	rotated := newStore(t, r, func(o *Options) {
		o.Key, o.PreviousKeys, o.Observe = otherKey, [][]byte{testKey}, obs.observe
	})
	if rotated.EntryKey(fp) != key {
		t.Fatal("rotating cache.key changed the entry's key name")
	}
	changes, stop := subscribed(t, rotated, key)
	defer stop()
	got, err := rotated.Load(ctx, key)
	if err != nil {
		t.Fatalf("Load of a value sealed with the previous key: %v", err)
	}
	if d := diffRecord(got, stored); d != "" {
		t.Errorf("Load after rotation: %s", d)
	}
	// The first call claimed the key check again, the read sealed the record again.
	if n := obs.get("rewrap/ok"); n != 2 {
		t.Errorf("rewrap/ok = %d, want 2 (the key check and the record, sealed again)", n)
	}
	if v := raw.Get(ctx, old.keyCheckName()).Val(); len(v) < 2 || v[1] != newID {
		t.Error("the rotated replica did not claim the key check with the new key")
	}
	h := raw.HGetAll(ctx, name).Val()
	for _, f := range []string{fieldRecord, fieldAccess} {
		if v := h[f]; len(v) < 2 || v[1] != newID {
			t.Errorf("field %s is not sealed with the new key after the read", f)
		}
	}
	if h[fieldGen] != "1" {
		t.Errorf("generation %q after the rewrap, want 1: nothing changed", h[fieldGen])
	}
	if d := raw.PTTL(ctx, name).Val(); d <= 0 || d > ttl {
		t.Errorf("expiry %v after the rewrap, was %v", d, ttl)
	}
	select {
	case <-changes:
		t.Error("the rewrap announced a change")
	case <-time.After(200 * time.Millisecond):
	}
	// Read and ping again: nothing left to seal again.
	if err := rotated.Ping(ctx); err != nil {
		t.Fatalf("Ping of the rotated replica: %v", err)
	}
	if _, err := rotated.Load(ctx, key); err != nil || obs.get("rewrap/ok") != 2 {
		t.Errorf("second Load: %v, rewraps %v", err, obs.m)
	}
	// The digest of a token the old key wrote is the rotated replica's.
	if err := rotated.Invalidate(ctx, key, "at-1"); err != nil || obs.get("invalidate/ok") != 1 {
		t.Errorf("Invalidate across the rotation: %v, %v", err, obs.m)
	}

	// A replica with the new key and the old one as previous writes with
	// the new key; one that knows only the old key, a replica not yet
	// rolled, finds out and leaves the value alone.
	if _, err := rotated.CompareAndSwap(ctx, key, 2, fullRecord()); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Load(ctx, key); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("Load by a replica with only the old key = %v, want ErrKeyMismatch", err)
	}
}

// TestRewrapScript: a record written between the read and the rewrap is
// left alone.
func TestRewrapScript(t *testing.T) {
	r := startRedis(t)
	ctx := t.Context()
	raw := rawClient(t, r)
	raw.HSet(ctx, "p:{x}:rec", "g", "2", "r", "r-2", "a", "a-2")
	for _, tc := range []struct {
		name         string
		args         []any
		want         int64
		wantR, wantA string
	}{
		{"another generation", []any{"1", "r-2", "r-new", "a-2", "a-new"}, 0, "r-2", "a-2"},
		{"another record", []any{"2", "r-1", "r-new", "a-2", "a-new"}, 0, "r-2", "a-2"},
		{"another access token", []any{"2", "r-2", "r-new", "", ""}, 0, "r-2", "a-2"},
		{"as read", []any{"2", "r-2", "r-new", "a-2", "a-new"}, 1, "r-new", "a-new"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := rewrapScript.Run(ctx, raw, []string{"p:{x}:rec"}, tc.args...).Int64()
			if err != nil || n != tc.want {
				t.Errorf("rewrap = %d, %v; want %d", n, err, tc.want)
			}
			h := raw.HGetAll(ctx, "p:{x}:rec").Val()
			if h["r"] != tc.wantR || h["a"] != tc.wantA || h["g"] != "2" {
				t.Errorf("record %v", h)
			}
		})
	}
}

// restrictedACL is the ACL user docs/replicas.md tells operators to make:
// the commands the Store sends, and those its scripts call, on its keys
// and channels only.
var restrictedACL = []string{"resetkeys", "~oauthproxy:*", "resetchannels", "&oauthproxy:*", "-@all",
	"+get", "+set", "+del", "+exists", "+hgetall", "+hget", "+hset", "+hdel", "+hincrby", "+pexpireat", "+persist",
	"+eval", "+evalsha", "+publish", "+subscribe", "+ping"}

// TestRestrictedACL runs every operation, a rotation's rewrap included,
// as a user that has only the commands docs/replicas.md lists.
func TestRestrictedACL(t *testing.T) {
	const password = "acl-Pa55word"
	r := startRedis(t, append(append([]string{"--user", "proxy", "on", ">" + password}, restrictedACL...), "--user", "default", "off")...)
	as := func(o *Options) { o.Username, o.Password = "proxy", password }
	old := newStore(t, r, as)
	exercise(t, old, newStore(t, r, as))
	ctx := t.Context()
	key := old.EntryKey([]byte("acl"))
	if _, err := old.CompareAndSwap(ctx, key, 0, fullRecord()); err != nil {
		t.Fatal(err)
	}
	var obs observed
	rotated := newStore(t, r, func(o *Options) {
		as(o)
		o.Key, o.PreviousKeys, o.Observe = otherKey, [][]byte{testKey}, obs.observe
	})
	if _, err := rotated.Load(ctx, key); err != nil || obs.get("rewrap/ok") != 2 {
		t.Errorf("Load after a rotation: %v; %v", err, obs.m)
	}
	// An access token without a refresh token expires (PEXPIREAT);
	// invalidating it twice finds no digest the second time (EXISTS).
	rec := fullRecord()
	rec.RefreshToken, rec.Expiry = "", time.Now().Add(time.Hour)
	if _, err := rotated.CompareAndSwap(ctx, key, 1, rec); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := rotated.Invalidate(ctx, key, "at-1"); err != nil {
			t.Fatal(err)
		}
	}
	if obs.get("invalidate/ok") != 1 || obs.get("invalidate/conflict") != 1 {
		t.Errorf("Invalidate twice: %v", obs.m)
	}
}
