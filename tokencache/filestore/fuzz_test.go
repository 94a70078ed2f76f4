package filestore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// FuzzOpen feeds arbitrary file contents to Open and Load: they must not
// panic, and must never change a file they were given.
func FuzzOpen(f *testing.F) {
	valid := validStore(f)
	for _, seed := range [][]byte{
		valid,
		valid[:len(valid)/2],
		nil,
		[]byte(`{"v":1}`),
		[]byte(`{"v":1,"check":"","records":null}`),
		[]byte(`{"v":1.5}`),
		[]byte(`{"v":2,"records":{"a":"AAAA"}}`),
		[]byte(`[]`),
		[]byte("\xff\xfe"),
	} {
		f.Add(seed)
	}
	// One file per worker, rewritten by each run: a directory per run
	// would make each run several times slower.
	path := filepath.Join(f.TempDir(), "tokens.db")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(path, testKey)
		if err == nil {
			for _, key := range []string{"a", "b", ""} {
				if _, err := s.Load(context.Background(), key); err != nil && !errors.Is(err, tokencache.ErrNotFound) {
					t.Errorf("Load(%q) after a successful Open: %v", key, err)
				}
			}
			s.Close()
		}
		after, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(after, data) {
			t.Fatalf("Open changed the file")
		}
	})
}
