package filestore

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

var (
	testKey  = bytes.Repeat([]byte{7}, KeySize)
	otherKey = bytes.Repeat([]byte{8}, KeySize)
)

func open(t testing.TB, path string, key []byte) *Store {
	t.Helper()
	s, err := Open(path, key)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func cas(t testing.TB, s *Store, key string, old uint64, rec tokencache.Record) tokencache.Record {
	t.Helper()
	got, err := s.CompareAndSwap(context.Background(), key, old, rec)
	if err != nil {
		t.Fatalf("CompareAndSwap(%q, %d): %v", key, old, err)
	}
	return got
}

func load(t testing.TB, s *Store, key string) tokencache.Record {
	t.Helper()
	got, err := s.Load(context.Background(), key)
	if err != nil {
		t.Fatalf("Load(%q): %v", key, err)
	}
	return got
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sameRecord compares records as a store keeps them: times by instant,
// no scopes and empty scopes alike.
func sameRecord(a, b tokencache.Record) bool {
	return a.Generation == b.Generation &&
		a.RefreshToken == b.RefreshToken && a.AccessToken == b.AccessToken &&
		a.TokenType == b.TokenType && slices.Equal(a.Scopes, b.Scopes) &&
		a.Obtained.Equal(b.Obtained) && a.Expiry.Equal(b.Expiry) &&
		a.Subject == b.Subject && a.Updated.Equal(b.Updated) &&
		a.Failure == b.Failure && a.RetryAt.Equal(b.RetryAt)
}

func fullRecord() tokencache.Record {
	now := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.FixedZone("CET", 3600))
	return tokencache.Record{
		RefreshToken: "rt-secret-value",
		AccessToken:  "at-secret-value",
		TokenType:    "Bearer",
		Scopes:       []string{"openid", "offline_access"},
		Obtained:     now,
		Expiry:       now.Add(time.Hour),
		Subject:      "alice@example.com",
		Updated:      now,
		Failure:      "invalid_grant",
		RetryAt:      now.Add(time.Minute),
	}
}

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.db")
	s := open(t, path, testKey)
	for _, key := range []string{"user-delegated", "sidecar-login", "ünïcode key"} {
		want := fullRecord()
		want.Subject = key
		want.Generation = 1
		if got := cas(t, s, key, 0, want); !sameRecord(got, want) {
			t.Errorf("CompareAndSwap(%q) = %+v, want %+v", key, got, want)
		}
	}
	// A second Store, as after a restart, reads what the first wrote.
	s2 := open(t, path, testKey)
	for _, key := range []string{"user-delegated", "sidecar-login", "ünïcode key"} {
		want := fullRecord()
		want.Subject = key
		want.Generation = 1
		got := load(t, s2, key)
		if !sameRecord(got, want) {
			t.Errorf("Load(%q) = %+v, want %+v", key, got, want)
		}
		if got.RefreshToken.Reveal() != "rt-secret-value" {
			t.Errorf("Load(%q).RefreshToken lost its value", key)
		}
	}
	if _, err := s2.Load(context.Background(), "absent"); !errors.Is(err, tokencache.ErrNotFound) {
		t.Errorf("Load(absent) error %v, want ErrNotFound", err)
	}
	data := readFile(t, path)
	for _, secret := range []string{"rt-secret-value", "at-secret-value", "alice", "invalid_grant"} {
		if bytes.Contains(data, []byte(secret)) {
			t.Errorf("the file holds %q in the clear", secret)
		}
	}
	for _, name := range []string{path, path + ".lock"} {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", filepath.Base(name), m)
		}
	}
	if w := s.Warnings(); len(w) != 0 {
		t.Errorf("Warnings() = %q for a new store, want none", w)
	}
}

func TestOpenCreatesAnEmptyStoreBoundToItsKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.db")
	open(t, path, testKey)
	data := readFile(t, path)
	var env map[string]any
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatalf("new store is not JSON: %v", err)
	}
	if env["v"] != float64(1) || env["check"] == "" {
		t.Errorf("new store = %s, want v 1 and a check value", data)
	}
	// With no record in it yet, another key is still told apart.
	if _, err := Open(path, otherKey); !errors.Is(err, ErrWrongKey) {
		t.Errorf("Open with another key: %v, want ErrWrongKey", err)
	}
}

func TestGenerationsAndConflicts(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "tokens.db"), testKey)
	rec := tokencache.Record{RefreshToken: "one"}
	if got := cas(t, s, "k", 0, rec); got.Generation != 1 {
		t.Fatalf("first CompareAndSwap generation %d, want 1", got.Generation)
	}
	steps := []struct {
		name    string
		old     uint64
		wantErr error
		wantGen uint64
	}{
		{name: "stale zero", old: 0, wantErr: tokencache.ErrConflict, wantGen: 1},
		{name: "ahead", old: 2, wantErr: tokencache.ErrConflict, wantGen: 1},
		{name: "current", old: 1, wantGen: 2},
		{name: "now stale", old: 1, wantErr: tokencache.ErrConflict, wantGen: 2},
		{name: "current again", old: 2, wantGen: 3},
	}
	for _, st := range steps {
		rec.RefreshToken = tokencache.Secret(st.name)
		_, err := s.CompareAndSwap(ctx, "k", st.old, rec)
		if !errors.Is(err, st.wantErr) {
			t.Fatalf("%s: CompareAndSwap(old %d) error %v, want %v", st.name, st.old, err, st.wantErr)
		}
		got := load(t, s, "k")
		if got.Generation != st.wantGen {
			t.Fatalf("%s: generation %d, want %d", st.name, got.Generation, st.wantGen)
		}
		if err == nil && got.RefreshToken.Reveal() != st.name {
			t.Fatalf("%s: stored refresh token not the one written", st.name)
		}
	}
	if err := s.Delete(ctx, "k", 2); !errors.Is(err, tokencache.ErrConflict) {
		t.Errorf("Delete(stale) error %v, want ErrConflict", err)
	}
	if err := s.Delete(ctx, "k", 3); err != nil {
		t.Errorf("Delete(current): %v", err)
	}
	if _, err := s.Load(ctx, "k"); !errors.Is(err, tokencache.ErrNotFound) {
		t.Errorf("Load after Delete error %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "k", 7); err != nil {
		t.Errorf("Delete of nothing: %v, want nil", err)
	}
	if got := cas(t, s, "k", 0, rec); got.Generation != 1 {
		t.Errorf("CompareAndSwap after Delete generation %d, want 1", got.Generation)
	}
	if _, err := s.CompareAndSwap(ctx, "", 0, rec); err == nil {
		t.Error("CompareAndSwap with an empty key succeeded")
	}
	if _, err := s.CompareAndSwap(ctx, "bad\xff", 0, rec); err == nil {
		t.Error("CompareAndSwap with a key that is not UTF-8 succeeded")
	}
}

// TestTwoStoresInterleave is the proxy and `oauthproxy login` on one file:
// each sees the other's writes, and a stale write is a conflict.
func TestTwoStoresInterleave(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "tokens.db")
	proxy, cli := open(t, path, testKey), open(t, path, testKey)

	if _, err := proxy.Load(ctx, "e"); !errors.Is(err, tokencache.ErrNotFound) {
		t.Fatalf("Load before login: %v", err)
	}
	cas(t, cli, "e", 0, tokencache.Record{RefreshToken: "from-login"})
	if _, err := proxy.CompareAndSwap(ctx, "e", 0, tokencache.Record{RefreshToken: "stale"}); !errors.Is(err, tokencache.ErrConflict) {
		t.Fatalf("proxy CompareAndSwap(0) after login: %v, want ErrConflict", err)
	}
	got := load(t, proxy, "e")
	if got.Generation != 1 || got.RefreshToken.Reveal() != "from-login" {
		t.Fatalf("proxy sees generation %d, want the login's record", got.Generation)
	}
	// The proxy rotates the token; another entry written by the CLI in
	// between survives the proxy's write.
	cas(t, cli, "other", 0, tokencache.Record{RefreshToken: "other"})
	cas(t, proxy, "e", 1, tokencache.Record{RefreshToken: "rotated"})
	if got := load(t, cli, "e"); got.Generation != 2 || got.RefreshToken.Reveal() != "rotated" {
		t.Fatalf("cli sees generation %d, want the rotated record", got.Generation)
	}
	if got := load(t, proxy, "other"); got.RefreshToken.Reveal() != "other" {
		t.Fatal("the proxy's write lost the CLI's other record")
	}
	// `oauthproxy revoke` deletes with what it loaded; the proxy's next
	// rotation, based on generation 2, is then a conflict.
	if err := cli.Delete(ctx, "e", 2); err != nil {
		t.Fatal(err)
	}
	if _, err := proxy.CompareAndSwap(ctx, "e", 2, tokencache.Record{RefreshToken: "late"}); !errors.Is(err, tokencache.ErrConflict) {
		t.Fatalf("proxy CompareAndSwap after revoke: %v, want ErrConflict", err)
	}
	if _, err := proxy.Load(ctx, "e"); !errors.Is(err, tokencache.ErrNotFound) {
		t.Fatalf("proxy Load after revoke: %v, want ErrNotFound", err)
	}
}

func TestWrongKey(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "tokens.db")
	s := open(t, path, testKey)
	cas(t, s, "e", 0, tokencache.Record{RefreshToken: "keep me"})
	before := readFile(t, path)

	_, err := Open(path, otherKey)
	if !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Open with another key: %v, want ErrWrongKey", err)
	}
	if want := "the store_key does not decrypt " + path + ": wrong key or a different store"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if !bytes.Equal(readFile(t, path), before) {
		t.Error("Open with another key changed the file")
	}

	// Another deployment's store put at the path while s is open: s
	// reports it and overwrites nothing.
	other := filepath.Join(t.TempDir(), "other.db")
	o := open(t, other, otherKey)
	cas(t, o, "e", 0, tokencache.Record{RefreshToken: "theirs"})
	theirs := readFile(t, other)
	if err := os.WriteFile(path, theirs, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "e"); !errors.Is(err, ErrWrongKey) {
		t.Errorf("Load of a foreign store: %v, want ErrWrongKey", err)
	}
	if _, err := s.CompareAndSwap(ctx, "e", 1, tokencache.Record{RefreshToken: "x"}); !errors.Is(err, ErrWrongKey) {
		t.Errorf("CompareAndSwap on a foreign store: %v, want ErrWrongKey", err)
	}
	if err := s.Delete(ctx, "e", 1); !errors.Is(err, ErrWrongKey) {
		t.Errorf("Delete on a foreign store: %v, want ErrWrongKey", err)
	}
	if !bytes.Equal(readFile(t, path), theirs) {
		t.Error("a write replaced a store sealed with another key")
	}
}

// validStore returns the bytes of a store holding records a and b.
func validStore(t testing.TB) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens.db")
	s := open(t, path, testKey)
	cas(t, s, "a", 0, tokencache.Record{RefreshToken: "ra"})
	cas(t, s, "b", 0, tokencache.Record{RefreshToken: "rb"})
	return readFile(t, path)
}

// edit decodes a store file, applies f and encodes it again.
func edit(t testing.TB, data []byte, f func(env map[string]any)) []byte {
	t.Helper()
	var env map[string]any
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	f(env)
	out, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDamagedFiles(t *testing.T) {
	valid := validStore(t)
	records := func(env map[string]any) map[string]any { return env["records"].(map[string]any) }
	flip := func(s string) string {
		b, _ := base64.StdEncoding.DecodeString(s)
		b[len(b)-1] ^= 1
		return base64.StdEncoding.EncodeToString(b)
	}
	tests := []struct {
		name    string
		data    []byte
		wantIs  error
		wantMsg string
	}{
		{name: "empty", data: nil, wantIs: ErrCorrupt, wantMsg: "the file is empty (0 bytes)"},
		{name: "blank", data: []byte("\n\n"), wantIs: ErrCorrupt, wantMsg: "the file is empty"},
		{name: "truncated", data: valid[:len(valid)/2], wantIs: ErrCorrupt, wantMsg: "truncated"},
		{name: "last byte cut", data: bytes.TrimSpace(valid)[:len(bytes.TrimSpace(valid))-1], wantIs: ErrCorrupt, wantMsg: "truncated"},
		{name: "not JSON", data: []byte("SQLite format 3\x00"), wantIs: ErrCorrupt, wantMsg: "not JSON at byte"},
		{name: "JSON array", data: []byte("[1,2]"), wantIs: ErrCorrupt, wantMsg: "not a JSON object"},
		{name: "no version", data: []byte(`{"records":{}}`), wantIs: ErrCorrupt, wantMsg: `no format version "v"`},
		{name: "newer version", data: []byte(`{"v":2}`), wantMsg: "is in format 2; this oauthproxy reads format 1"},
		{name: "no check", data: edit(t, valid, func(e map[string]any) { delete(e, "check") }), wantIs: ErrCorrupt, wantMsg: `no "check" value`},
		{name: "check not base64", data: edit(t, valid, func(e map[string]any) { e["check"] = "!!" }), wantIs: ErrCorrupt, wantMsg: `"check" value is malformed`},
		{name: "records wrong type", data: edit(t, valid, func(e map[string]any) { e["records"] = []int{1} }), wantIs: ErrCorrupt, wantMsg: "cannot unmarshal"},
		{name: "record not base64", data: edit(t, valid, func(e map[string]any) { records(e)["a"] = "%%%" }), wantIs: ErrCorrupt, wantMsg: `record "a" is malformed`},
		{name: "record too short", data: edit(t, valid, func(e map[string]any) { records(e)["a"] = "AAAA" }), wantIs: ErrCorrupt, wantMsg: `record "a" is malformed`},
		{name: "record altered", data: edit(t, valid, func(e map[string]any) { r := records(e); r["a"] = flip(r["a"].(string)) }), wantIs: ErrCorrupt, wantMsg: `record "a" does not decrypt`},
		{name: "records swapped", data: edit(t, valid, func(e map[string]any) { r := records(e); r["a"], r["b"] = r["b"], r["a"] }), wantIs: ErrCorrupt, wantMsg: "moved from another key"},
		{name: "record moved to a new key", data: edit(t, valid, func(e map[string]any) { r := records(e); r["c"] = r["a"] }), wantIs: ErrCorrupt, wantMsg: `record "c" does not decrypt`},
		{name: "check altered", data: edit(t, valid, func(e map[string]any) { e["check"] = flip(e["check"].(string)) }), wantIs: ErrWrongKey, wantMsg: "does not decrypt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tokens.db")
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Open(path, testKey)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("Open error %v, want %v", err, tc.wantIs)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), path) {
				t.Errorf("Open error %q, want it to name %s and contain %q", err, path, tc.wantMsg)
			}
			if !bytes.Equal(readFile(t, path), tc.data) {
				t.Error("Open changed a damaged file")
			}
		})
	}
}

// TestDamageAfterOpen: a record damaged while the proxy runs fails the
// writes that would hide it, and leaves the others alone.
func TestDamageAfterOpen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "tokens.db")
	s := open(t, path, testKey)
	cas(t, s, "a", 0, tokencache.Record{RefreshToken: "ra"})
	cas(t, s, "b", 0, tokencache.Record{RefreshToken: "rb"})
	damaged := edit(t, readFile(t, path), func(e map[string]any) {
		r := e["records"].(map[string]any)
		r["a"] = r["b"]
	})
	if err := os.WriteFile(path, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompareAndSwap(ctx, "a", 1, tokencache.Record{}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("CompareAndSwap over a damaged record: %v, want ErrCorrupt", err)
	}
	if err := s.Delete(ctx, "a", 1); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Delete of a damaged record: %v, want ErrCorrupt", err)
	}
	if !bytes.Equal(readFile(t, path), damaged) {
		t.Error("a write replaced a damaged record")
	}
	if got := load(t, s, "b"); got.RefreshToken.Reveal() != "rb" {
		t.Error("Load(b) lost its record")
	}
	if err := os.WriteFile(path, damaged[:20], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompareAndSwap(ctx, "c", 0, tokencache.Record{}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("CompareAndSwap on a truncated file: %v, want ErrCorrupt", err)
	}
	if got := readFile(t, path); len(got) != 20 {
		t.Error("a write replaced a truncated file")
	}
}

func TestRemovedFileIsEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.db")
	s := open(t, path, testKey)
	cas(t, s, "a", 0, tokencache.Record{RefreshToken: "ra"})
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(context.Background(), "a"); !errors.Is(err, tokencache.ErrNotFound) {
		t.Errorf("Load from a removed file: %v, want ErrNotFound", err)
	}
	cas(t, s, "a", 0, tokencache.Record{RefreshToken: "again"})
	if got := load(t, open(t, path, testKey), "a"); got.RefreshToken.Reveal() != "again" {
		t.Error("the store written again does not hold the new record")
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		key     []byte
		wantMsg string
	}{
		{name: "missing directory", path: filepath.Join(dir, "nope", "tokens.db"), key: testKey,
			wantMsg: "the directory " + filepath.Join(dir, "nope") + " does not exist"},
		{name: "parent is a file", path: filepath.Join(file, "tokens.db"), key: testKey, wantMsg: file + " is not a directory"},
		{name: "store is a directory", path: filepath.Join(dir, "adir"), key: testKey, wantMsg: "is not a regular file"},
		{name: "short key", path: filepath.Join(dir, "tokens.db"), key: testKey[:16], wantMsg: "the key is 16 bytes, want 32"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(tc.path, tc.key)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Open error %q, want it to contain %q", err, tc.wantMsg)
			}
		})
	}
}

func TestPermissionWarning(t *testing.T) {
	tests := []struct {
		mode     os.FileMode
		wantWarn bool
	}{
		{0o600, false},
		{0o400, false},
		{0o640, true},
		{0o604, true},
		{0o660, true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%04o", tc.mode), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tokens.db")
			open(t, path, testKey)
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			s := open(t, path, testKey)
			w := s.Warnings()
			if got := len(w) > 0; got != tc.wantWarn {
				t.Fatalf("Warnings() = %q, want a warning: %v", w, tc.wantWarn)
			}
			if tc.wantWarn && !strings.Contains(w[0], fmt.Sprintf("mode %04o", tc.mode)) {
				t.Errorf("warning %q does not name the mode", w[0])
			}
			if tc.mode&0o200 == 0 {
				return
			}
			// The next write tightens the file.
			cas(t, s, "a", 0, tokencache.Record{})
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if m := fi.Mode().Perm(); m != 0o600 {
				t.Errorf("after a write the mode is %04o, want 0600", m)
			}
		})
	}
}

func TestSymlinkIsFollowed(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "real.db")
	open(t, target, testKey)
	link := filepath.Join(dir, "link.db")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	s := open(t, link, testKey)
	cas(t, s, "a", 0, tokencache.Record{RefreshToken: "ra"})
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link was replaced (%v)", err)
	}
	if got := load(t, open(t, target, testKey), "a"); got.RefreshToken.Reveal() != "ra" {
		t.Error("the write did not reach the link's target")
	}
}

// TestCrashLeftovers: a temporary file from a writer that died does not
// break Open, is not taken for the store, and is cleaned up.
func TestCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens.db")
	s := open(t, path, testKey)
	cas(t, s, "a", 0, tokencache.Record{RefreshToken: "ra"})
	s.Close()
	leftovers := []string{path + ".tmp-12345", path + ".tmp-67890"}
	for i, name := range leftovers {
		// One half-written, one complete but never renamed.
		data := validStore(t)
		if i == 0 {
			data = data[:10]
		}
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	unrelated := filepath.Join(dir, "tokens.db.bak")
	if err := os.WriteFile(unrelated, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, testKey)
	if got := load(t, s, "a"); got.RefreshToken.Reveal() != "ra" || got.Generation != 1 {
		t.Errorf("after a crash Load(a) = generation %d, want the record written before", got.Generation)
	}
	for _, name := range leftovers {
		if _, err := os.Stat(name); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left in place (%v)", filepath.Base(name), err)
		}
	}
	if _, err := os.Stat(unrelated); err != nil {
		t.Errorf("Open removed an unrelated file: %v", err)
	}
}

// TestFailedWriteKeepsTheOldFile makes each step of a write fail.
func TestFailedWriteKeepsTheOldFile(t *testing.T) {
	failing := errors.New("injected failure")
	tests := []struct {
		name string
		set  func()
		// applied: the rename happened, only its durability is unknown.
		applied bool
	}{
		{name: "rename", set: func() { rename = func(string, string) error { return failing } }},
		{name: "directory fsync", set: func() { syncDir = func(string) error { return failing } }, applied: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			origRename, origSync := rename, syncDir
			t.Cleanup(func() { rename, syncDir = origRename, origSync })
			dir := t.TempDir()
			path := filepath.Join(dir, "tokens.db")
			s := open(t, path, testKey)
			cas(t, s, "a", 0, tokencache.Record{RefreshToken: "old"})
			before := readFile(t, path)
			tc.set()
			_, err := s.CompareAndSwap(context.Background(), "a", 1, tokencache.Record{RefreshToken: "new"})
			if !errors.Is(err, failing) || !strings.Contains(err.Error(), path) {
				t.Fatalf("CompareAndSwap error %v, want the injected failure naming the store", err)
			}
			rename, syncDir = origRename, origSync
			if got := !bytes.Equal(readFile(t, path), before); got != tc.applied {
				t.Errorf("file changed: %v, want %v", got, tc.applied)
			}
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if strings.Contains(e.Name(), ".tmp-") {
					t.Errorf("temporary file %s left behind", e.Name())
				}
			}
		})
	}
}

// TestLockIsHonoured holds the flock as another process would and checks
// that a write waits for it, until its context ends.
func TestLockIsHonoured(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.db")
	s := open(t, path, testKey)
	other, err := os.Open(path + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = s.CompareAndSwap(ctx, "a", 0, tokencache.Record{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("CompareAndSwap while another holds the lock: %v, want DeadlineExceeded", err)
	}
	if _, err := s.Load(context.Background(), "a"); !errors.Is(err, tokencache.ErrNotFound) {
		t.Fatalf("the write went through while the lock was held: Load = %v", err)
	}
	if err := s.Delete(ctx, "a", 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Delete while another holds the lock: %v, want DeadlineExceeded", err)
	}

	done := make(chan error, 1)
	go func() {
		_, err := s.CompareAndSwap(context.Background(), "a", 0, tokencache.Record{})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("CompareAndSwap returned (%v) while the lock was held", err)
	case <-time.After(20 * time.Millisecond):
		// Still waiting, as it should: a write is a few fsyncs, a
		// wrongly taken lock returns well within this.
	}
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("CompareAndSwap after the lock was released: %v", err)
	}
}

// TestConcurrentIncrements: goroutines on two Stores of one file add one
// to a counter each, retrying on conflict; no increment is lost. Run with
// -race.
func TestConcurrentIncrements(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.db")
	stores := []*Store{open(t, path, testKey), open(t, path, testKey)}
	const workers, each = 6, 5
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			s := stores[w%len(stores)]
			for range each {
				if err := increment(context.Background(), s, "counter"); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := load(t, stores[0], "counter")
	if got.Generation != workers*each || got.RefreshToken.Reveal() != fmt.Sprint(workers*each) {
		t.Errorf("counter at generation %d holding %q, want %d", got.Generation, got.RefreshToken.Reveal(), workers*each)
	}
}

// increment adds one to the number kept as the refresh token of key,
// as a token rotation would: load, compute, compare and swap, again on
// conflict.
func increment(ctx context.Context, s *Store, key string) error {
	for {
		cur, err := s.Load(ctx, key)
		if err != nil && !errors.Is(err, tokencache.ErrNotFound) {
			return err
		}
		var n int
		if cur.Generation > 0 {
			if _, err := fmt.Sscan(cur.RefreshToken.Reveal(), &n); err != nil {
				return err
			}
		}
		_, err = s.CompareAndSwap(ctx, key, cur.Generation, tokencache.Record{RefreshToken: tokencache.Secret(fmt.Sprint(n + 1))})
		if errors.Is(err, tokencache.ErrConflict) {
			continue
		}
		return err
	}
}

// TestWriteKeepsTheOwner: `sudo oauthproxy login` must not leave the
// proxy's user unable to read its store or take its lock.
func TestWriteKeepsTheOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
	const uid, gid = 4321, 4322
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens.db")
	s := open(t, path, testKey)
	s.Close()
	if err := os.Remove(path + ".lock"); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, testKey)
	cas(t, s, "a", 0, tokencache.Record{RefreshToken: "ra"})
	for _, name := range []string{path, path + ".lock"} {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s owned by %d:%d, want %d:%d", filepath.Base(name), st.Uid, st.Gid, uid, gid)
		}
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", filepath.Base(name), m)
		}
	}
}
