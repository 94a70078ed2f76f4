package upstreams

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/oauthproxy/oauthproxy/tokencache/filestore"
)

// stores are the refresh-token store files a runtime has open, one per
// file and key however many entries share it. A reload takes over the
// ones it still uses; Retire closes the others.
type stores struct {
	open map[storeID]*filestore.Store
	prev *stores
	log  *slog.Logger
}

type storeID struct {
	path string
	key  [32]byte // SHA-256 of the key: the same file with another key is another store
}

func newStores(prev *stores, log *slog.Logger) *stores {
	if log == nil {
		log = slog.Default()
	}
	return &stores{open: map[storeID]*filestore.Store{}, prev: prev, log: log}
}

// storePath is o's store file: a relative path is relative to the
// config file's directory.
func (c *Config) storePath(o *OAuth2) string {
	if o.Store == "" || filepath.IsAbs(o.Store) || c.File == "" {
		return o.Store
	}
	return filepath.Join(filepath.Dir(c.File), o.Store)
}

// get opens (or takes over) the store of o.
func (s *stores) get(cfg *Config, o *OAuth2) (*filestore.Store, error) {
	key, err := ParseStoreKey(o.StoreKey.Reveal())
	if err != nil {
		return nil, fmt.Errorf("oauth2 %q: store_key: %w", o.Name, err)
	}
	id := storeID{path: cfg.storePath(o), key: sha256.Sum256(key)}
	if st, ok := s.open[id]; ok {
		return st, nil
	}
	if s.prev != nil {
		if st, ok := s.prev.open[id]; ok {
			s.open[id] = st
			return st, nil
		}
	}
	st, err := filestore.Open(id.path, key)
	if err != nil {
		return nil, fmt.Errorf("oauth2 %q: %w", o.Name, err)
	}
	for _, w := range st.Warnings() {
		s.log.Warn("token store: "+w, "oauth2", o.Name)
	}
	s.open[id] = st
	return st, nil
}

// retire closes the stores keep does not use (nil: all).
func (s *stores) retire(keep *stores) {
	for id, st := range s.open {
		if keep == nil || keep.open[id] != st {
			st.Close()
		}
	}
}
