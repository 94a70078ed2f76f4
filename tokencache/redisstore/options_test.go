package redisstore

import (
	"bytes"
	"crypto/tls"
	"strings"
	"testing"
	"time"
)

func TestNewOptions(t *testing.T) {
	const password = "Pa55-in-url"
	for _, tc := range []struct {
		name    string
		opts    Options
		wantErr string // "" for none
		check   func(t *testing.T, s *Store)
	}{
		{name: "defaults", opts: Options{URL: "redis://127.0.0.1:6379", Key: testKey},
			check: func(t *testing.T, s *Store) {
				if s.prefix != DefaultPrefix || s.timeout != DefaultCallTimeout {
					t.Errorf("prefix %q timeout %v, want the defaults", s.prefix, s.timeout)
				}
			}},
		{name: "short key", opts: Options{URL: "redis://127.0.0.1:6379", Key: testKey[:16]}, wantErr: "cache.key must be 32 bytes, not 16"},
		{name: "short previous key", opts: Options{URL: "redis://127.0.0.1:6379", Key: testKey, PreviousKeys: [][]byte{otherKey, otherKey[:31]}},
			wantErr: "previous key 2 must be 32 bytes, not 31"},
		{name: "no key", opts: Options{URL: "redis://127.0.0.1:6379"}, wantErr: "cache.key must be 32 bytes"},
		{name: "no address", opts: Options{Key: testKey}, wantErr: "one of url, sentinel or cluster"},
		{name: "bad scheme", opts: Options{URL: "http://127.0.0.1", Key: testKey}, wantErr: "invalid URL scheme"},
		{name: "bad url holding a password", opts: Options{URL: "redis://u:" + password + "%zz@h:1", Key: testKey}, wantErr: "the url is not valid"},
		{name: "bad db", opts: Options{URL: "redis://u:" + password + "@h:1/x", Key: testKey}, wantErr: "invalid database"},
		{name: "sentinel and cluster", opts: Options{Key: testKey, Sentinel: &Sentinel{Master: "m", Addrs: []string{"a:1"}}, Cluster: []string{"b:1"}}, wantErr: "exclude each other"},
		{name: "sentinel without master", opts: Options{Key: testKey, Sentinel: &Sentinel{Addrs: []string{"a:1"}}}, wantErr: "sentinel needs master"},
		{name: "cluster with a database", opts: Options{URL: "redis://h:1/2", Key: testKey, Cluster: []string{"b:1"}}, wantErr: "only database 0"},
		{name: "brace in the prefix", opts: Options{URL: "redis://h:1", Key: testKey, Prefix: "a{b}:"}, wantErr: "must not hold { or }"},
		{name: "cluster", opts: Options{Key: testKey, Cluster: []string{"a:1"}, Prefix: "p:", CallTimeout: time.Second}},
		{name: "sentinel", opts: Options{Key: testKey, Sentinel: &Sentinel{Master: "m", Addrs: []string{"a:1"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.opts)
			if tc.wantErr != "" {
				if err == nil {
					s.Close()
					t.Fatalf("New succeeded, want an error with %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), password) {
					t.Errorf("New: %q, want %q and no password", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer s.Close()
			if tc.check != nil {
				tc.check(t, s)
			}
		})
	}
}

func TestUniversalOptions(t *testing.T) {
	for _, tc := range []struct {
		name               string
		opts               Options
		addrs              []string
		user, pass         string
		db                 int
		tls                bool
		serverName, master string
		cluster            bool
	}{
		{name: "url", opts: Options{URL: "redis://u:p@h:7/3"}, addrs: []string{"h:7"}, user: "u", pass: "p", db: 3},
		{name: "password overrides", opts: Options{URL: "redis://u:p@h:7", Username: "v", Password: "q"}, addrs: []string{"h:7"}, user: "v", pass: "q"},
		{name: "rediss", opts: Options{URL: "rediss://h:7"}, addrs: []string{"h:7"}, tls: true, serverName: "h"},
		{name: "tls with redis://", opts: Options{URL: "redis://h.example:7", TLS: &tls.Config{}}, addrs: []string{"h.example:7"}, tls: true, serverName: "h.example"},
		{name: "sentinel", opts: Options{URL: "redis://:p@x/1", Sentinel: &Sentinel{Master: "m", Addrs: []string{"s1:26379", "s2:26379"}}},
			addrs: []string{"s1:26379", "s2:26379"}, pass: "p", db: 1, master: "m"},
		{name: "cluster of one", opts: Options{Cluster: []string{"c:7000"}, Password: "p"}, addrs: []string{"c:7000"}, pass: "p", cluster: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uo, err := universalOptions(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(uo.Addrs, ",") != strings.Join(tc.addrs, ",") || uo.Username != tc.user || uo.Password != tc.pass ||
				uo.DB != tc.db || (uo.TLSConfig != nil) != tc.tls || uo.MasterName != tc.master || uo.IsClusterMode != tc.cluster {
				t.Errorf("got addrs %v user %q db %d tls %v master %q cluster %v", uo.Addrs, uo.Username, uo.DB, uo.TLSConfig != nil, uo.MasterName, uo.IsClusterMode)
			}
			if tc.tls && uo.TLSConfig.ServerName != tc.serverName {
				t.Errorf("ServerName %q, want %q", uo.TLSConfig.ServerName, tc.serverName)
			}
			if !uo.ContextTimeoutEnabled || uo.ReadTimeout != DefaultCallTimeout || uo.MaxRetries != -1 {
				t.Errorf("timeouts: context %v read %v retries %d", uo.ContextTimeoutEnabled, uo.ReadTimeout, uo.MaxRetries)
			}
		})
	}
	// The caller's tls.Config is not changed.
	c := &tls.Config{}
	if _, err := universalOptions(Options{URL: "redis://h:1", TLS: c}); err != nil || c.ServerName != "" {
		t.Errorf("universalOptions changed the caller's TLS config: %q, %v", c.ServerName, err)
	}
}

func TestSeal(t *testing.T) {
	k, err := deriveKeys(testKey)
	if err != nil {
		t.Fatal(err)
	}
	other, err := deriveKeys(otherKey)
	if err != nil {
		t.Fatal(err)
	}
	sealed := k.seal("p:{x}:rec", "r", []byte("plain"))
	if string(k.seal("p:{x}:rec", "r", []byte("plain"))) == string(sealed) {
		t.Error("two seals of one value are equal: the nonce repeats")
	}
	// cache.key rotated from testKey to otherKey, and an old replica.
	rotated, err := deriveKeys(otherKey, testKey)
	if err != nil {
		t.Fatal(err)
	}
	resealed := rotated.seal("p:{x}:rec", "r", []byte("plain"))
	if resealed[1] == sealed[1] {
		t.Fatalf("the key ids of two keys are equal (%d): pick other test keys", sealed[1])
	}
	for _, tc := range []struct {
		name        string
		keys        *keys
		key, field  string
		value       []byte
		wantOpening bool
	}{
		{"as sealed", k, "p:{x}:rec", "r", sealed, true},
		{"another Redis key", k, "p:{y}:rec", "r", sealed, false},
		{"another field", k, "p:{x}:rec", "a", sealed, false},
		{"another cache.key", other, "p:{x}:rec", "r", sealed, false},
		{"truncated", k, "p:{x}:rec", "r", sealed[:10], false},
		{"another version", k, "p:{x}:rec", "r", append([]byte{2}, sealed[1:]...), false},
		{"flipped bit", k, "p:{x}:rec", "r", append(sealed[:len(sealed)-1:len(sealed)-1], sealed[len(sealed)-1]^1), false},
		{"rotated: an old value", rotated, "p:{x}:rec", "r", sealed, true},
		{"rotated: a new value", rotated, "p:{x}:rec", "r", resealed, true},
		{"rotated: another Redis key", rotated, "p:{y}:rec", "r", sealed, false},
		{"old replica: a new value", k, "p:{x}:rec", "r", resealed, false},
		{"another key id", rotated, "p:{x}:rec", "r", append([]byte{formatVersion, sealed[1] ^ resealed[1] ^ 0xff}, sealed[2:]...), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.keys.open(tc.key, tc.field, tc.value)
			if tc.wantOpening != (err == nil) || (err == nil && string(b) != "plain") {
				t.Errorf("open = %q, %v; want opening %v", b, err, tc.wantOpening)
			}
		})
	}
	for _, tc := range []struct {
		name      string
		value     []byte
		wantStale bool
	}{{"sealed with the previous key", sealed, true}, {"sealed with the current key", resealed, false}} {
		if _, stale, err := rotated.openAny("p:{x}:rec", "r", tc.value); err != nil || stale != tc.wantStale {
			t.Errorf("%s: stale %v, %v; want stale %v", tc.name, stale, err, tc.wantStale)
		}
	}
}

// TestKeysSharedIdByte: a one-byte key id may name two keys; a value
// opens with whichever of them sealed it.
func TestKeysSharedIdByte(t *testing.T) {
	a, _ := deriveKeys(testKey)
	var twin []byte
	for i := range 10000 {
		k := bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 16)
		if kk, _ := deriveKeys(k); kk.cur.id == a.cur.id && !bytes.Equal(k, testKey) {
			twin = k
			break
		}
	}
	if twin == nil {
		t.Fatal("no key with the same id among 10000")
	}
	both, _ := deriveKeys(twin, testKey)
	sealed := a.seal("p:{x}:rec", "r", []byte("plain"))
	if b, stale, err := both.openAny("p:{x}:rec", "r", sealed); err != nil || !stale || string(b) != "plain" {
		t.Errorf("openAny = %q, stale %v, %v", b, stale, err)
	}
}

func TestEntryKey(t *testing.T) {
	k, _ := deriveKeys(testKey)
	// Names and digests stay across a rotation: they come from the oldest key.
	for _, r := range []*keys{mustKeys(t, otherKey, testKey), mustKeys(t, bytes.Repeat([]byte{3}, 32), otherKey, testKey)} {
		if r.entryKey([]byte("a")) != k.entryKey([]byte("a")) || r.tokenDigest("at") != k.tokenDigest("at") {
			t.Error("rotating cache.key changes the key names or the digests")
		}
	}
	if o := mustKeys(t, otherKey); o.entryKey([]byte("a")) == k.entryKey([]byte("a")) || o.tokenDigest("at") == k.tokenDigest("at") {
		t.Error("another cache.key gives the same key names or digests")
	}
	a, b := k.entryKey([]byte("a")), k.entryKey([]byte("b"))
	if a == b || a != k.entryKey([]byte("a")) {
		t.Errorf("entryKey: a %q b %q", a, b)
	}
	for _, key := range []string{a, b, k.entryKey(nil)} {
		if !validEntryKey(key) {
			t.Errorf("validEntryKey(%q) = false", key)
		}
	}
	for _, key := range []string{"", "a", a[1:], a[:len(a)-1] + "x", "{" + strings.Repeat(".", len(a)-2) + "}"} {
		if validEntryKey(key) {
			t.Errorf("validEntryKey(%q) = true", key)
		}
	}
}

func mustKeys(t *testing.T, key []byte, previous ...[]byte) *keys {
	t.Helper()
	k, err := deriveKeys(key, previous...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
