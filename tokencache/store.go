package tokencache

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// Record is what a Store keeps of one oauth2 entry: the refresh token that
// outlives the process, and, for stores shared by replicas, the current
// access token. Records are values: a Store never hands out one it keeps.
type Record struct {
	// Generation counts the writes of the record: 1 after the first.
	// CompareAndSwap compares it and sets it.
	Generation uint64

	RefreshToken Secret
	// AccessToken and what is known of it; empty in a store that keeps
	// refresh tokens only.
	AccessToken Secret
	TokenType   string
	Scopes      []string
	Obtained    time.Time
	Expiry      time.Time

	// Subject names who signed in (authorization code and device code
	// grants), from the ID token or the token response: shown on /tokens
	// and the admin page, never used to decide anything.
	Subject string
	// Updated is when the record was written.
	Updated time.Time

	// Failure and RetryAt, in a shared store, are the last failed renewal
	// (a message safe to show, never a secret) and when the next attempt
	// is due: replicas waiting for a renewal fail fast with it, and share
	// its backoff.
	Failure string
	RetryAt time.Time
}

// Clone returns a copy of r that shares nothing with it.
func (r Record) Clone() Record {
	r.Scopes = slices.Clone(r.Scopes)
	return r
}

// Errors of a Store, for errors.Is.
var (
	// ErrNotFound: the store holds no record under the key.
	ErrNotFound = errors.New("no stored record")
	// ErrConflict: the record's generation is not the one the caller
	// expected; another writer got there first. Load it again.
	ErrConflict = errors.New("the stored record changed")
)

// Store keeps records between token requests and across restarts. Keys are
// chosen by the caller (an entry's name, or a keyed hash of its settings for
// stores shared by replicas). Implementations are safe for concurrent use.
type Store interface {
	// Load returns the record under key, or an error wrapping ErrNotFound.
	Load(ctx context.Context, key string) (Record, error)
	// CompareAndSwap writes rec under key if the stored record's
	// generation is old (0: there is no record yet), and returns what it
	// stored, with Generation old+1. Otherwise it returns an error
	// wrapping ErrConflict and writes nothing. A nil error means the
	// record is durable: a crash after it returns cannot lose it.
	CompareAndSwap(ctx context.Context, key string, old uint64, rec Record) (Record, error)
	// Delete removes the record under key if its generation is old;
	// otherwise it returns an error wrapping ErrConflict. Deleting a key
	// that holds nothing is not an error.
	Delete(ctx context.Context, key string, old uint64) error
}

// MemoryStore is a Store in the process's memory: what a Source uses when
// no store is configured. The zero value is ready to use.
type MemoryStore struct {
	mu sync.Mutex
	m  map[string]Record
}

// Load implements Store.
func (s *MemoryStore) Load(_ context.Context, key string) (Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.m[key]
	if !ok {
		return Record{}, ErrNotFound
	}
	return r.Clone(), nil
}

// CompareAndSwap implements Store.
func (s *MemoryStore) CompareAndSwap(_ context.Context, key string, old uint64, rec Record) (Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[key].Generation != old {
		return Record{}, ErrConflict
	}
	if s.m == nil {
		s.m = map[string]Record{}
	}
	rec = rec.Clone()
	rec.Generation = old + 1
	s.m[key] = rec
	return rec.Clone(), nil
}

// Delete implements Store.
func (s *MemoryStore) Delete(_ context.Context, key string, old uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.m[key]
	if !ok {
		return nil
	}
	if r.Generation != old {
		return ErrConflict
	}
	delete(s.m, key)
	return nil
}

// SharedStore is a Store that several processes use at once (replicas on
// Redis). Besides records it offers a lease, so that one process at a
// time renews an entry, and a change notification, so that the others
// learn of the result without polling for it.
type SharedStore interface {
	Store
	// Acquire takes the lease on key for ttl. It returns ErrLeaseHeld
	// (wrapped) while another owner holds it. release gives it back if
	// it is still this owner's; it may be called more than once.
	Acquire(ctx context.Context, key string, ttl time.Duration) (release func(context.Context) error, err error)
	// Changes delivers a value each time another process changes the
	// record under key, until stop is called. Deliveries may be merged
	// and may be spurious; a closed channel means the notifications
	// stopped (the connection was lost) and the caller should poll.
	Changes(key string) (c <-chan struct{}, stop func())
	// Invalidate deletes the access token under key only if it is still
	// token (compare and delete), keeping the refresh token.
	Invalidate(ctx context.Context, key string, token Secret) error
}

// ErrLeaseHeld: another owner holds the lease.
var ErrLeaseHeld = errors.New("the lease is held by another process")
