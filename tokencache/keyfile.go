package tokencache

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxPEMBytes bounds a key or certificate file: a chain is a few KiB, a
// CA bundle a few hundred.
const maxPEMBytes = 4 << 20

// Credential is a private key and, when a certificate file goes with it,
// the certificate chain (leaf first) whose leaf holds the key's public
// half. It is immutable.
type Credential struct {
	Key   crypto.Signer
	Certs []*x509.Certificate // nil without a certificate file
	tls   *tls.Certificate
	sum   [32]byte // of the files' contents: tells a changed credential
}

// TLSCertificate is the credential as a TLS client (or server) presents
// it; nil without a certificate.
func (c *Credential) TLSCertificate() *tls.Certificate { return c.tls }

// Thumbprint is the base64url SHA-256 of the leaf certificate's DER, the
// JWS x5t#S256 header (RFC 7515 §4.1.8); "" without a certificate.
func (c *Credential) Thumbprint() string {
	if len(c.Certs) == 0 {
		return ""
	}
	sum := sha256.Sum256(c.Certs[0].Raw)
	return b64(sum[:])
}

// KeyPair is a private key file and an optional certificate file, read
// again when either changes on disk: a rotated client certificate, a
// rotated signing key. A check costs two stats and happens at most once per
// CheckEvery; a changed pair that does not load (half written, key and
// certificate not matching yet) keeps the previous credential, and is
// tried again at the next check. Safe for concurrent use.
type KeyPair struct {
	keyFile, certFile string
	every             time.Duration
	now               func() time.Time
	log               atomic.Pointer[slog.Logger]

	cur     atomic.Pointer[Credential]
	checked atomic.Int64 // UnixNano of the last check

	mu      sync.Mutex // one load at a time; guards stamp and lastErr
	stamp   [2]fileStamp
	lastErr string // the last reload problem logged
}

// KeyPairOptions tune a KeyPair.
type KeyPairOptions struct {
	// CheckEvery is how often the files are looked at again (default 1s;
	// the contract promises new files in use within 5s).
	CheckEvery time.Duration
	Logger     *slog.Logger // reload outcomes; nil: slog.Default()
	Now        func() time.Time
}

// DefaultKeyCheckEvery is how often a KeyPair looks at its files.
const DefaultKeyCheckEvery = time.Second

// LoadKeyPair reads keyFile (PEM: PKCS#1, PKCS#8 or SEC1; RSA, ECDSA or
// Ed25519) and certFile ("" for none). Its errors name the file and what
// is wrong with it, never the key.
func LoadKeyPair(keyFile, certFile string, opts KeyPairOptions) (*KeyPair, error) {
	k := &KeyPair{keyFile: keyFile, certFile: certFile, every: opts.CheckEvery, now: opts.Now}
	if k.every <= 0 {
		k.every = DefaultKeyCheckEvery
	}
	if k.now == nil {
		k.now = time.Now
	}
	k.SetLogger(opts.Logger)
	st, err := k.statAll()
	if err != nil {
		return nil, err
	}
	c, err := loadCredential(keyFile, certFile)
	if err != nil {
		return nil, err
	}
	k.stamp = st
	k.cur.Store(c)
	k.checked.Store(k.now().UnixNano())
	return k, nil
}

// SetLogger sets where reloads are reported; nil is slog.Default().
func (k *KeyPair) SetLogger(l *slog.Logger) {
	if l == nil {
		l = slog.Default()
	}
	k.log.Store(l)
}

// KeyFile and CertFile name the files.
func (k *KeyPair) KeyFile() string  { return k.keyFile }
func (k *KeyPair) CertFile() string { return k.certFile }

// Current returns the credential in use, looking at the files first when
// the last look is CheckEvery old. It never fails: the first load did not.
func (k *KeyPair) Current() *Credential {
	now := k.now()
	if now.UnixNano()-k.checked.Load() >= int64(k.every) && k.mu.TryLock() {
		// TryLock: a request never waits for another one's stat.
		k.checked.Store(now.UnixNano())
		k.check()
		k.mu.Unlock()
	}
	return k.cur.Load()
}

// check loads the pair if a file changed since the last good load. k.mu is held.
func (k *KeyPair) check() {
	st, err := k.statAll()
	if err == nil && st[0].same(k.stamp[0]) && st[1].same(k.stamp[1]) {
		return
	}
	var c *Credential
	if err == nil {
		c, err = loadCredential(k.keyFile, k.certFile)
	}
	if err != nil {
		// Said once per distinct problem: a half-written pair is tried
		// again at every check until it loads.
		if msg := err.Error(); msg != k.lastErr {
			k.lastErr = msg
			k.log.Load().Warn("a changed key or certificate file does not load (yet); keeping the one loaded before", "error", msg)
		}
		return
	}
	k.stamp, k.lastErr = st, ""
	k.swap(c)
}

// swap puts c in use if it differs from the current credential.
func (k *KeyPair) swap(c *Credential) bool {
	if old := k.cur.Load(); old != nil && old.sum == c.sum {
		return false
	}
	k.cur.Store(c)
	k.log.Load().Info("key or certificate file reloaded", "key_file", k.keyFile, "cert_file", k.certFile)
	return true
}

// Reload reads the files now, whatever their stat says, and reports
// whether the credential changed: the server refused the current one
// (invalid_client), and a changed one is worth one more try.
func (k *KeyPair) Reload() (changed bool, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	st, err := k.statAll()
	if err != nil {
		return false, err
	}
	c, err := loadCredential(k.keyFile, k.certFile)
	if err != nil {
		return false, err
	}
	k.stamp = st
	k.checked.Store(k.now().UnixNano())
	return k.swap(c), nil
}

// fileStamp is what a stat says of a file: a different inode (a rename, a
// Kubernetes ..data symlink swap), size or modification time is a change.
type fileStamp struct{ fi fs.FileInfo }

func (a fileStamp) same(b fileStamp) bool {
	if a.fi == nil || b.fi == nil {
		return a.fi == nil && b.fi == nil
	}
	return os.SameFile(a.fi, b.fi) && a.fi.Size() == b.fi.Size() && a.fi.ModTime().Equal(b.fi.ModTime())
}

func (k *KeyPair) statAll() ([2]fileStamp, error) {
	var st [2]fileStamp
	for i, f := range []string{k.keyFile, k.certFile} {
		if f == "" {
			continue
		}
		fi, err := os.Stat(f) // follows symlinks: a swapped target is a change
		if err != nil {
			return st, err
		}
		st[i] = fileStamp{fi}
	}
	return st, nil
}

// loadCredential reads and checks a key file and its certificate file.
func loadCredential(keyFile, certFile string) (*Credential, error) {
	kb, err := readPEMFile(keyFile)
	if err != nil {
		return nil, err
	}
	key, err := ParsePrivateKey(keyFile, kb)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(kb)
	c := &Credential{Key: key}
	if certFile != "" {
		cb, err := readPEMFile(certFile)
		if err != nil {
			return nil, err
		}
		h.Write([]byte{0})
		h.Write(cb)
		if c.Certs, err = ParseCertificates(certFile, cb); err != nil {
			return nil, err
		}
		if !samePublicKey(c.Certs[0].PublicKey, key.Public()) {
			return nil, fmt.Errorf("key %s does not match certificate %s", keyFile, certFile)
		}
		tc := &tls.Certificate{PrivateKey: key, Leaf: c.Certs[0]}
		for _, cert := range c.Certs {
			tc.Certificate = append(tc.Certificate, cert.Raw)
		}
		c.tls = tc
	}
	h.Sum(c.sum[:0])
	return c, nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// readPEMFile reads a key or certificate file, refusing what cannot be one
// (a FIFO, a device, a huge file) before reading it.
func readPEMFile(name string) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO must not wait for a writer.
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err // *fs.PathError names the file
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPEMBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if len(b) > maxPEMBytes {
		return nil, fmt.Errorf("%s is larger than %d MiB: not a key or certificate file", name, maxPEMBytes>>20)
	}
	return b, nil
}

// ParsePrivateKey reads the first private key of a PEM file: PKCS#1
// ("RSA PRIVATE KEY"), SEC1 ("EC PRIVATE KEY") or PKCS#8 ("PRIVATE KEY");
// RSA, ECDSA or Ed25519. Other blocks (certificates, EC parameters) are
// skipped. Its errors name file and what is wrong and never hold key
// bytes: parser errors are not passed on, as they may quote the input.
func ParsePrivateKey(file string, data []byte) (crypto.Signer, error) {
	var types []string
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		types = append(types, b.Type)
		if !strings.HasSuffix(b.Type, "PRIVATE KEY") {
			continue
		}
		if b.Type == "ENCRYPTED PRIVATE KEY" || strings.Contains(b.Headers["Proc-Type"], "ENCRYPTED") {
			return nil, fmt.Errorf("%s is encrypted (passphrase-protected keys are not supported; decrypt it with openssl pkey -in FILE -out FILE.plain)", file)
		}
		var key any
		var err error
		switch b.Type {
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(b.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "OPENSSH PRIVATE KEY":
			return nil, fmt.Errorf("%s is an OpenSSH key: convert it to PKCS#8 PEM (ssh-keygen -p -m PKCS8 -f FILE)", file)
		default:
			return nil, fmt.Errorf("%s: unsupported key type (a %q block; want RSA, EC or Ed25519 in PKCS#1, SEC1 or PKCS#8)", file, b.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: the %q block does not parse as a private key", file, b.Type)
		}
		switch k := key.(type) {
		case *rsa.PrivateKey:
			return k, nil
		case *ecdsa.PrivateKey:
			return k, nil
		case ed25519.PrivateKey:
			return k, nil
		default:
			return nil, fmt.Errorf("%s: unsupported key type %T (want RSA, EC or Ed25519)", file, key)
		}
	}
	if len(types) == 0 {
		if len(bytes.TrimSpace(data)) == 0 {
			return nil, fmt.Errorf("%s is empty", file)
		}
		return nil, fmt.Errorf("%s is not PEM (want a -----BEGIN PRIVATE KEY----- block)", file)
	}
	return nil, fmt.Errorf("%s holds no private key (it has %s)", file, strings.Join(types, ", "))
}

// ParseCertificates reads every CERTIFICATE block of a PEM file, in order.
// A file without one is an error that says so.
func ParseCertificates(file string, data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	sawPEM := false
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		sawPEM = true
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate %d does not parse: %w", file, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	switch {
	case len(certs) > 0:
		return certs, nil
	case !sawPEM && len(bytes.TrimSpace(data)) == 0:
		return nil, fmt.Errorf("%s is empty", file)
	case !sawPEM:
		return nil, fmt.Errorf("%s is not PEM (want -----BEGIN CERTIFICATE----- blocks)", file)
	}
	return nil, errors.New(file + " contains no certificates")
}
