// Package filestore is a tokencache.Store kept in one file on disk,
// encrypted at rest: the oauth2 keys store and store_key. It keeps the
// refresh tokens of authorization_code, device_code and refresh_token
// entries across restarts. Several entries may share one file (each under
// its own key), and several processes may use it at once: the running
// proxy and the oauthproxy login and revoke commands.
//
// # File format
//
// The file is a JSON object:
//
//	{"v":1,"check":"…","records":{"KEY":"…",…}}
//
// v is the format version; it changes when a change is incompatible. Each
// record is standard padded base64 of a 12-byte nonce followed by the
// AES-256-GCM ciphertext of the record as JSON, sealed with the additional
// data "oauthproxy filestore v1 record\x00" + KEY, so that a value moved
// under another key does not decrypt. check is an empty value sealed the
// same way with its own additional data: it tells a wrong key from a
// damaged record, even in a store that holds no records yet. Keys are in
// the clear: callers use entry names or hashes, never secrets.
//
// # Writes and locking
//
// A write goes to a temporary file in the same directory (mode 0600), is
// fsync'd, renamed over the store and the directory is fsync'd, so a crash
// leaves the old file or the new one, never a mix. Writers take an
// exclusive flock on PATH.lock, a side file that is never removed, and
// re-read the store under it, so a compare-and-swap by one process sees
// every write of the others. Readers take no lock: a rename is atomic, so
// they see a whole file. A file that is damaged or sealed with another key
// is reported and never overwritten: starting an empty store over it would
// lose every entry's sign-in.
package filestore

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// KeySize is the length in bytes of a store key (AES-256).
const KeySize = 32

// Errors of Open and of the Store's methods, for errors.Is.
var (
	// ErrWrongKey: the file was sealed with another key (a wrong
	// store_key, or another deployment's store at this path).
	ErrWrongKey = errors.New("wrong key or a different store")
	// ErrCorrupt: the file is damaged (truncated, edited) or is not a
	// token store. It is left as it is.
	ErrCorrupt = errors.New("damaged or not a token store (restore it from a backup, or remove it and sign in again)")
)

const (
	version  = 1
	adRecord = "oauthproxy filestore v1 record\x00"
	adCheck  = "oauthproxy filestore v1 check"
	// maxSize bounds what a read takes into memory; a store holds a few
	// hundred bytes per entry.
	maxSize = 16 << 20
)

// Store is a tokencache.Store in one file. Open it with Open. It is safe
// for concurrent use, by goroutines and by processes sharing the file.
type Store struct {
	path     string
	aead     cipher.AEAD
	lockFile *os.File
	// sem serialises this Store's writers: a second flock on the same
	// descriptor would succeed without waiting.
	sem      chan struct{}
	warnings []string
}

var _ tokencache.Store = (*Store)(nil)

// Open opens the store at path, sealed with key (KeySize bytes: see
// ParseKey), creating the file if it does not exist. It reads the whole
// file and checks that every record decrypts: a wrong key is an error
// wrapping ErrWrongKey, a damaged file one wrapping ErrCorrupt, and in
// neither case is the file changed. If path is a symbolic link, the store
// is the file it points to. Temporary files left by a writer that crashed
// are removed.
func Open(path string, key []byte) (*Store, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("token store %s: the key is %d bytes, want %d", path, len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("token store %s: %w", path, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("token store %s: %w", path, err)
	}
	path = filepath.Clean(path)
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		// Renaming over a link would replace the link, not the file.
		target, err := filepath.EvalSymlinks(path)
		if err != nil {
			return nil, fmt.Errorf("token store %s: %w", path, err)
		}
		path = target
	}
	dir := filepath.Dir(path)
	switch fi, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("token store %s: the directory %s does not exist", path, dir)
	case err != nil:
		return nil, fmt.Errorf("token store %s: directory %s: %w", path, dir, err)
	case !fi.IsDir():
		return nil, fmt.Errorf("token store %s: %s is not a directory", path, dir)
	}

	s := &Store{path: path, aead: aead, sem: make(chan struct{}, 1)}
	if err := s.openLockFile(); err != nil {
		return nil, err
	}
	if err := s.open(); err != nil {
		s.lockFile.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) open() error {
	unlock, err := s.lock(context.Background())
	if err != nil {
		return err
	}
	defer unlock()
	env, fi, err := s.read()
	if errors.Is(err, fs.ErrNotExist) {
		if err := s.write(s.newEnvelope(), nil); err != nil {
			return err
		}
		s.removeTemps()
		return nil
	}
	if err != nil {
		return err
	}
	// Every record now, so that damage shows at start rather than when
	// an entry first needs its refresh token.
	for _, k := range slices.Sorted(maps.Keys(env.Records)) {
		if _, err := s.unseal(k, env.Records[k]); err != nil {
			return err
		}
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		s.warnings = append(s.warnings, fmt.Sprintf(
			"token store %s is readable or writable by group or others (mode %04o): chmod 600 it (oauthproxy writes it 0600 from its next change)",
			s.path, m))
	}
	s.removeTemps()
	return nil
}

// Warnings returns what Open found worth telling the operator without
// failing: a store file that others than its owner may read.
func (s *Store) Warnings() []string { return slices.Clone(s.warnings) }

// Path returns the store file's path (the link's target if Open was given
// a symbolic link).
func (s *Store) Path() string { return s.path }

// Close releases the lock file's descriptor. The Store must not be used
// afterwards.
func (s *Store) Close() error { return s.lockFile.Close() }

// Load implements tokencache.Store. It reads the file each time, so it
// sees what other processes wrote.
func (s *Store) Load(ctx context.Context, key string) (tokencache.Record, error) {
	if err := ctx.Err(); err != nil {
		return tokencache.Record{}, err
	}
	env, _, err := s.read()
	if errors.Is(err, fs.ErrNotExist) {
		// Removed since Open: it holds nothing now, and the next write
		// creates it again.
		return tokencache.Record{}, fmt.Errorf("token store %s: %q: %w", s.path, key, tokencache.ErrNotFound)
	}
	if err != nil {
		return tokencache.Record{}, err
	}
	sealed, ok := env.Records[key]
	if !ok {
		return tokencache.Record{}, fmt.Errorf("token store %s: %q: %w", s.path, key, tokencache.ErrNotFound)
	}
	return s.unseal(key, sealed)
}

// CompareAndSwap implements tokencache.Store. A nil error means the file
// holding rec has been fsync'd and renamed into place, and the directory
// fsync'd. An error other than ErrConflict (or the context's) after the
// rename, from the directory's fsync, leaves unknown whether the write
// survives a crash; Load tells what is there now.
func (s *Store) CompareAndSwap(ctx context.Context, key string, old uint64, rec tokencache.Record) (tokencache.Record, error) {
	if err := checkKey(key); err != nil {
		return tokencache.Record{}, fmt.Errorf("token store %s: %w", s.path, err)
	}
	unlock, err := s.lock(ctx)
	if err != nil {
		return tokencache.Record{}, err
	}
	defer unlock()
	env, fi, err := s.readForWrite()
	if err != nil {
		return tokencache.Record{}, err
	}
	cur, err := s.generation(env, key)
	if err != nil {
		return tokencache.Record{}, err
	}
	if cur != old {
		return tokencache.Record{}, fmt.Errorf("token store %s: %q is at generation %d, not %d: %w", s.path, key, cur, old, tokencache.ErrConflict)
	}
	rec = rec.Clone()
	rec.Generation = old + 1
	sealed, err := s.seal(key, rec)
	if err != nil {
		return tokencache.Record{}, err
	}
	env.Records[key] = sealed
	if err := s.write(env, fi); err != nil {
		return tokencache.Record{}, err
	}
	return rec, nil
}

// Delete implements tokencache.Store. Like CompareAndSwap, a nil error
// means the removal is durable.
func (s *Store) Delete(ctx context.Context, key string, old uint64) error {
	unlock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	env, fi, err := s.readForWrite()
	if err != nil {
		return err
	}
	if _, ok := env.Records[key]; !ok {
		return nil
	}
	cur, err := s.generation(env, key)
	if err != nil {
		return err
	}
	if cur != old {
		return fmt.Errorf("token store %s: %q is at generation %d, not %d: %w", s.path, key, cur, old, tokencache.ErrConflict)
	}
	delete(env.Records, key)
	return s.write(env, fi)
}

// generation returns the generation of the record under key, 0 if there
// is none. A record that does not decrypt is an error: overwriting it
// would hide the damage.
func (s *Store) generation(env *envelope, key string) (uint64, error) {
	sealed, ok := env.Records[key]
	if !ok {
		return 0, nil
	}
	r, err := s.unseal(key, sealed)
	if err != nil {
		return 0, err
	}
	return r.Generation, nil
}

func checkKey(key string) error {
	if key == "" {
		return errors.New("empty record key")
	}
	if !utf8.ValidString(key) {
		// JSON would replace the invalid bytes, and the record would
		// no longer decrypt under the key it was sealed with.
		return fmt.Errorf("record key %q is not valid UTF-8", key)
	}
	return nil
}

// envelope is the file's JSON.
type envelope struct {
	V       int               `json:"v"`
	Check   string            `json:"check"`
	Records map[string]string `json:"records"`
}

func (s *Store) newEnvelope() *envelope {
	return &envelope{V: version, Check: s.sealBytes(nil, adCheck), Records: map[string]string{}}
}

// read reads and decodes the file, and checks that the key opens it. A
// missing file is an error wrapping fs.ErrNotExist.
func (s *Store) read() (*envelope, fs.FileInfo, error) {
	f, err := os.Open(s.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("reading token store: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("reading token store: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("token store %s is not a regular file (%s)", s.path, fi.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("reading token store: %w", err)
	}
	if len(data) > maxSize {
		return nil, nil, s.corrupt("larger than %d MiB", maxSize>>20)
	}
	env, err := s.decode(data)
	if err != nil {
		return nil, nil, err
	}
	return env, fi, nil
}

// readForWrite is read for a writer: a missing file is an empty store.
func (s *Store) readForWrite() (*envelope, fs.FileInfo, error) {
	env, fi, err := s.read()
	if errors.Is(err, fs.ErrNotExist) {
		return s.newEnvelope(), nil, nil
	}
	return env, fi, err
}

func (s *Store) corrupt(format string, args ...any) error {
	return fmt.Errorf("token store %s: %s: %w", s.path, fmt.Sprintf(format, args...), ErrCorrupt)
}

func (s *Store) decode(data []byte) (*envelope, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, s.corrupt("the file is empty (%d bytes)", len(data))
	}
	var probe struct {
		V *int `json:"v"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		if se := (*json.SyntaxError)(nil); errors.As(err, &se) {
			if se.Offset >= int64(len(data)) {
				return nil, s.corrupt("truncated: the JSON ends early, at byte %d", len(data))
			}
			return nil, s.corrupt("not JSON at byte %d", se.Offset)
		}
		return nil, s.corrupt("not a JSON object (%v)", err)
	}
	switch {
	case probe.V == nil:
		return nil, s.corrupt(`no format version "v"`)
	case *probe.V != version:
		return nil, fmt.Errorf("token store %s is in format %d; this oauthproxy reads format %d (was it written by another version?)", s.path, *probe.V, version)
	}
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, s.corrupt("%v", err)
	}
	if env.Check == "" {
		return nil, s.corrupt(`no "check" value`)
	}
	ct, err := base64.StdEncoding.Strict().DecodeString(env.Check)
	if err != nil || len(ct) < s.aead.NonceSize()+s.aead.Overhead() {
		return nil, s.corrupt(`the "check" value is malformed`)
	}
	if _, err := s.aead.Open(nil, ct[:s.aead.NonceSize()], ct[s.aead.NonceSize():], []byte(adCheck)); err != nil {
		return nil, fmt.Errorf("the store_key does not decrypt %s: %w", s.path, ErrWrongKey)
	}
	if env.Records == nil {
		env.Records = map[string]string{}
	}
	return &env, nil
}

// payload is a record as sealed. It is not tokencache.Record: Secret
// marshals as "[redacted]" on purpose.
type payload struct {
	Generation   uint64    `json:"generation"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	AccessToken  string    `json:"access_token,omitempty"`
	TokenType    string    `json:"token_type,omitempty"`
	Scopes       []string  `json:"scopes,omitempty"`
	Obtained     time.Time `json:"obtained,omitzero"`
	Expiry       time.Time `json:"expiry,omitzero"`
	Subject      string    `json:"subject,omitempty"`
	Updated      time.Time `json:"updated,omitzero"`
	Failure      string    `json:"failure,omitempty"`
	RetryAt      time.Time `json:"retry_at,omitzero"`
}

func (s *Store) seal(key string, r tokencache.Record) (string, error) {
	p := payload{
		Generation:   r.Generation,
		RefreshToken: r.RefreshToken.Reveal(),
		AccessToken:  r.AccessToken.Reveal(),
		TokenType:    r.TokenType,
		Scopes:       r.Scopes,
		Obtained:     r.Obtained,
		Expiry:       r.Expiry,
		Subject:      r.Subject,
		Updated:      r.Updated,
		Failure:      r.Failure,
		RetryAt:      r.RetryAt,
	}
	plain, err := json.Marshal(p)
	if err != nil {
		// Only a time outside years 0-9999 gets here; the error names
		// the field, never a value.
		return "", fmt.Errorf("token store %s: encoding record %q: %w", s.path, key, err)
	}
	return s.sealBytes(plain, adRecord+key), nil
}

func (s *Store) sealBytes(plain []byte, ad string) string {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	rand.Read(nonce)
	return base64.StdEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plain, []byte(ad)))
}

func (s *Store) unseal(key, sealed string) (tokencache.Record, error) {
	ct, err := base64.StdEncoding.Strict().DecodeString(sealed)
	if err != nil || len(ct) < s.aead.NonceSize()+s.aead.Overhead() {
		return tokencache.Record{}, s.corrupt("record %q is malformed", key)
	}
	plain, err := s.aead.Open(nil, ct[:s.aead.NonceSize()], ct[s.aead.NonceSize():], []byte(adRecord+key))
	if err != nil {
		// The check value opened, so the key is right: the record was
		// altered, or moved here from another key.
		return tokencache.Record{}, s.corrupt("record %q does not decrypt (altered, or moved from another key)", key)
	}
	var p payload
	if err := json.Unmarshal(plain, &p); err != nil {
		return tokencache.Record{}, s.corrupt("record %q: %v", key, err)
	}
	if p.Generation == 0 {
		return tokencache.Record{}, s.corrupt("record %q has generation 0", key)
	}
	return tokencache.Record{
		Generation:   p.Generation,
		RefreshToken: tokencache.Secret(p.RefreshToken),
		AccessToken:  tokencache.Secret(p.AccessToken),
		TokenType:    p.TokenType,
		Scopes:       p.Scopes,
		Obtained:     p.Obtained,
		Expiry:       p.Expiry,
		Subject:      p.Subject,
		Updated:      p.Updated,
		Failure:      p.Failure,
		RetryAt:      p.RetryAt,
	}, nil
}

// Hooks for tests that make a write fail part way.
var (
	rename  = os.Rename
	syncDir = func(dir string) error {
		d, err := os.Open(dir)
		if err != nil {
			return err
		}
		defer d.Close()
		return d.Sync()
	}
)

// write replaces the file with env, durably. prev is the file being
// replaced (nil if none): the new file keeps its owner, so that a login
// run as root does not lock the proxy's user out of its store.
func (s *Store) write(env *envelope, prev fs.FileInfo) (err error) {
	data, err := json.Marshal(env)
	if err != nil {
		return fmt.Errorf("token store %s: %w", s.path, err)
	}
	data = append(data, '\n')
	dir, base := filepath.Split(s.path)
	f, err := os.CreateTemp(dir, base+".tmp-*") // mode 0600
	if err != nil {
		return fmt.Errorf("writing token store %s: %w", s.path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if uid, gid, ok := owner(prev); ok && uid != os.Geteuid() {
		if err := f.Chown(uid, gid); err != nil {
			return fmt.Errorf("writing token store %s: keeping its owner (uid %d): %w; run as that user", s.path, uid, err)
		}
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing token store %s: %w", s.path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("writing token store %s: fsync: %w", s.path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing token store %s: %w", s.path, err)
	}
	if err := rename(f.Name(), s.path); err != nil {
		return fmt.Errorf("writing token store %s: %w", s.path, err)
	}
	if err := syncDir(filepath.Dir(s.path)); err != nil {
		// The rename happened: nothing to clean up, but no promise
		// that it survives a crash either.
		return fmt.Errorf("writing token store %s: fsync of its directory: %w", s.path, err)
	}
	return nil
}

func owner(fi fs.FileInfo) (uid, gid int, ok bool) {
	if fi == nil {
		return 0, 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return int(st.Uid), int(st.Gid), true
}

// removeTemps removes temporary files that writers left behind when they
// crashed. The caller holds the lock: no writer is at work, so every one
// is stale.
func (s *Store) removeTemps() {
	dir, base := filepath.Split(s.path)
	ents, err := os.ReadDir(filepath.Clean(dir))
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), base+".tmp-") && e.Type().IsRegular() {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

func (s *Store) openLockFile() error {
	name := s.path + ".lock"
	// Read-only is enough for flock, and lets a lock file made by
	// another user with a wider mode still be used.
	f, err := os.OpenFile(name, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		f, err = os.OpenFile(name, os.O_RDONLY, 0)
	} else if err == nil {
		if fi, serr := os.Stat(s.path); serr == nil {
			if uid, gid, ok := owner(fi); ok && uid != os.Geteuid() {
				// Best effort: without it the store's owner cannot
				// open the lock; a write would fail the same way
				// and say so.
				f.Chown(uid, gid)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("token store %s: opening its lock file: %w", s.path, err)
	}
	s.lockFile = f
	return nil
}

// lock takes the Store's semaphore and the exclusive flock, waiting until
// ctx ends. flock is polled rather than waited on so that a process that
// stopped while holding it (a suspended CLI) cannot hang a request past
// its deadline.
func (s *Store) lock(ctx context.Context) (unlock func(), err error) {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("token store %s: waiting for the lock: %w", s.path, ctx.Err())
	}
	fd := int(s.lockFile.Fd())
	wait := 200 * time.Microsecond
	var t *time.Timer
	for {
		err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			<-s.sem
			return nil, fmt.Errorf("token store %s: locking %s.lock: %w", s.path, s.path, err)
		}
		if t == nil {
			t = time.NewTimer(wait)
		} else {
			t.Reset(wait)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			<-s.sem
			return nil, fmt.Errorf("token store %s: waiting for the lock held by another process: %w", s.path, ctx.Err())
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
	if t != nil {
		t.Stop()
	}
	return func() {
		syscall.Flock(fd, syscall.LOCK_UN)
		<-s.sem
	}, nil
}
