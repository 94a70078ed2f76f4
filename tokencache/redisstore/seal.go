package redisstore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// formatVersion is the first byte of every sealed value and part of its
// additional data, so that a later format can tell old values apart.
const formatVersion = 1

// keys are the subkeys derived from cache.key, one per purpose, so that
// no two uses share a key (HMAC as a PRF: HKDF-Expand with one block).
//
// Rotation: values are sealed with the current key and opened with any
// key known (the current one or a previous one), chosen by the key id in
// the value. Key names and access-token digests must not change when the
// key does (every replica, whichever keys it has, must find the same
// records and compare the same digests), so they come from the oldest
// key known: the last previous key, or cache.key when there is none.
type keys struct {
	names  []byte   // EntryKey's HMAC
	digest []byte   // the access-token digest Invalidate compares
	cur    sealer   // seals every value
	prev   []sealer // open values sealed before a rotation
}

// sealer is AES-256-GCM under one key, and the id that names it in
// sealed values.
type sealer struct {
	id   byte
	aead cipher.AEAD
}

// deriveKeys derives the subkeys of key (cache.key) and previous (the
// keys it had before, newest first).
func deriveKeys(key []byte, previous ...[]byte) (*keys, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("cache.key must be 32 bytes, not %d", len(key))
	}
	for i, p := range previous {
		if len(p) != 32 {
			return nil, fmt.Errorf("previous key %d must be 32 bytes, not %d", i+1, len(p))
		}
	}
	oldest := key
	if len(previous) > 0 {
		oldest = previous[len(previous)-1]
	}
	k := &keys{
		names:  subkey(oldest, "oauthproxy key names"),
		digest: subkey(oldest, "oauthproxy access token digests"),
	}
	var err error
	if k.cur, err = newSealer(key); err != nil {
		return nil, err
	}
	for _, p := range previous {
		s, err := newSealer(p)
		if err != nil {
			return nil, err
		}
		k.prev = append(k.prev, s)
	}
	return k, nil
}

func subkey(key []byte, label string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	return m.Sum(nil)
}

func newSealer(key []byte) (sealer, error) {
	block, err := aes.NewCipher(subkey(key, "oauthproxy values"))
	if err != nil {
		return sealer{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return sealer{}, err
	}
	return sealer{id: subkey(key, "oauthproxy key id")[0], aead: aead}, nil
}

// entryKey is "{" + base64url(HMAC(names, fingerprint)) + "}": the braces
// are a Cluster hash tag, so every key of an entry lands in one slot.
func (k *keys) entryKey(fingerprint []byte) string {
	m := hmac.New(sha256.New, k.names)
	m.Write(fingerprint)
	return "{" + base64.RawURLEncoding.EncodeToString(m.Sum(nil)) + "}"
}

// entryKeyLen is the length of what entryKey returns.
var entryKeyLen = 2 + base64.RawURLEncoding.EncodedLen(sha256.Size)

// validEntryKey reports whether s has EntryKey's shape. The store refuses
// other keys so that an entry's name can never reach Redis in the clear.
func validEntryKey(s string) bool {
	if len(s) != entryKeyLen || s[0] != '{' || s[len(s)-1] != '}' {
		return false
	}
	for _, c := range s[1 : len(s)-1] {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// tokenDigest is what Invalidate compares in Redis instead of the token.
func (k *keys) tokenDigest(token string) string {
	m := hmac.New(sha256.New, k.digest)
	m.Write([]byte(token))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// errOpen is why a value does not open; the caller wraps it in
// ErrKeyMismatch, since a different cache.key is by far the likeliest cause.
var errOpen = errors.New("a stored value does not decrypt with this cache.key")

// additionalData binds a sealed value to the format, the Redis key and the
// hash field it is stored under: a value copied elsewhere does not open.
func additionalData(name, field string) []byte {
	return fmt.Appendf(nil, "oauthproxy\x00%d\x00%s\x00%s", formatVersion, name, field)
}

// seal returns version || key id || nonce || AES-256-GCM(plain), with the
// current key.
func (k *keys) seal(name, field string, plain []byte) []byte {
	c := k.cur
	ns := c.aead.NonceSize()
	out := make([]byte, 2+ns, 2+ns+len(plain)+c.aead.Overhead())
	out[0], out[1] = formatVersion, c.id
	rand.Read(out[2:]) // never fails (crypto/rand, Go 1.24+)
	return c.aead.Seal(out, out[2:2+ns], plain, additionalData(name, field))
}

func (k *keys) open(name, field string, sealed []byte) ([]byte, error) {
	plain, _, err := k.openAny(name, field, sealed)
	return plain, err
}

// openAny opens a value sealed with any key known; stale says it was not
// the current one, so the value should be sealed again.
func (k *keys) openAny(name, field string, sealed []byte) (plain []byte, stale bool, err error) {
	if len(sealed) < 2 || sealed[0] != formatVersion {
		return nil, false, errOpen
	}
	ad := additionalData(name, field)
	// Ids are one byte: two keys may share one, so every match is tried.
	for i, c := range append([]sealer{k.cur}, k.prev...) {
		ns := c.aead.NonceSize()
		if c.id != sealed[1] || len(sealed) < 2+ns+c.aead.Overhead() {
			continue
		}
		if plain, err := c.aead.Open(nil, sealed[2:2+ns], sealed[2+ns:], ad); err == nil {
			return plain, i > 0, nil
		}
	}
	return nil, false, errOpen
}

// Hash fields of an entry's record (PREFIX{h}:rec). Only g and d are in the
// clear: the generation is a counter, and d is a keyed digest.
const (
	fieldGen    = "g" // generation, for compare-and-swap in a script
	fieldRecord = "r" // sealed storedRecord
	fieldAccess = "a" // sealed storedAccess; absent without an access token
	fieldDigest = "d" // tokenDigest of the access token, for Invalidate
)

// storedRecord is the part of a Record that outlives an access token.
// Secrets are plain strings here: tokencache.Secret marshals as
// "[redacted]", and this JSON is only ever seen sealed.
type storedRecord struct {
	RefreshToken string    `json:"rt,omitempty"`
	Subject      string    `json:"sub,omitempty"`
	Updated      time.Time `json:"upd,omitzero"`
	Failure      string    `json:"fail,omitempty"`
	RetryAt      time.Time `json:"retry,omitzero"`
}

// storedAccess is the access token and what is known of it: a field of its
// own so that Invalidate can drop it in a script without decrypting.
type storedAccess struct {
	AccessToken string    `json:"at,omitempty"`
	TokenType   string    `json:"type,omitempty"`
	Scopes      []string  `json:"scope,omitempty"`
	Obtained    time.Time `json:"obt,omitzero"`
	Expiry      time.Time `json:"exp,omitzero"`
}

func (a storedAccess) empty() bool {
	return a.AccessToken == "" && a.TokenType == "" && len(a.Scopes) == 0 && a.Obtained.IsZero() && a.Expiry.IsZero()
}

// sealedRecord is a Record ready for the CAS script.
type sealedRecord struct {
	record []byte
	access []byte // nil: no access token fields
	digest string // "": no access token
}

func (k *keys) sealRecord(name string, rec tokencache.Record) (sealedRecord, error) {
	r, err := json.Marshal(storedRecord{
		RefreshToken: rec.RefreshToken.Reveal(),
		Subject:      rec.Subject,
		Updated:      rec.Updated,
		Failure:      rec.Failure,
		RetryAt:      rec.RetryAt,
	})
	if err != nil {
		return sealedRecord{}, err
	}
	out := sealedRecord{record: k.seal(name, fieldRecord, r)}
	a := storedAccess{
		AccessToken: rec.AccessToken.Reveal(),
		TokenType:   rec.TokenType,
		Scopes:      rec.Scopes,
		Obtained:    rec.Obtained,
		Expiry:      rec.Expiry,
	}
	if a.empty() {
		return out, nil
	}
	b, err := json.Marshal(a)
	if err != nil {
		return sealedRecord{}, err
	}
	out.access = k.seal(name, fieldAccess, b)
	if a.AccessToken != "" {
		out.digest = k.tokenDigest(a.AccessToken)
	}
	return out, nil
}

// openRecord rebuilds a Record from the sealed fields of a hash. A field
// that does not open returns an error wrapping errOpen; stale says a
// field was sealed with a previous key.
func (k *keys) openRecord(name string, gen uint64, record, access []byte) (_ tokencache.Record, stale bool, _ error) {
	b, stale, err := k.openAny(name, fieldRecord, record)
	if err != nil {
		return tokencache.Record{}, false, err
	}
	var r storedRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return tokencache.Record{}, false, fmt.Errorf("decoding the record: %w", err)
	}
	rec := tokencache.Record{
		Generation:   gen,
		RefreshToken: tokencache.Secret(r.RefreshToken),
		Subject:      r.Subject,
		Updated:      r.Updated,
		Failure:      r.Failure,
		RetryAt:      r.RetryAt,
	}
	if access == nil {
		return rec, stale, nil
	}
	b, staleA, err := k.openAny(name, fieldAccess, access)
	if err != nil {
		return tokencache.Record{}, false, err
	}
	var a storedAccess
	if err := json.Unmarshal(b, &a); err != nil {
		return tokencache.Record{}, false, fmt.Errorf("decoding the record's access token: %w", err)
	}
	rec.AccessToken = tokencache.Secret(a.AccessToken)
	rec.TokenType = a.TokenType
	rec.Scopes = a.Scopes
	rec.Obtained = a.Obtained
	rec.Expiry = a.Expiry
	return rec, stale || staleA, nil
}

// keyCheckPlain is what the key-check record holds, sealed.
const keyCheckPlain = "oauthproxy cache.key check"
