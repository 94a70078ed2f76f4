package upstreams

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// Resolver reads what ${...} references name. The zero value reads the
// process environment and the file system.
type Resolver struct {
	Getenv   func(string) (string, bool)
	ReadFile func(string) ([]byte, error)
	// Dir is where a relative ${file:path} is read from; Load sets it to
	// the config file's directory.
	Dir string
}

// resolver is a Resolver that records every file it reads: those files
// are part of the config (a reload watches them). Safe for concurrent use.
type resolver struct {
	Resolver
	mu    sync.Mutex
	files map[string]bool
}

func (r *resolver) getenv(k string) (string, bool) {
	if r.Getenv != nil {
		return r.Getenv(k)
	}
	return os.LookupEnv(k)
}

// path is where a reference to p is read from.
func (r *resolver) path(p string) string {
	if !filepath.IsAbs(p) && r.Dir != "" {
		return filepath.Join(r.Dir, p)
	}
	return p
}

// readFile reads a referenced file, at most limit bytes.
func (r *resolver) readFile(p string, limit int64) ([]byte, error) {
	p = r.path(p)
	r.mu.Lock()
	if r.files == nil {
		r.files = map[string]bool{}
	}
	r.files[p] = true
	r.mu.Unlock()
	if r.ReadFile != nil {
		return r.ReadFile(p)
	}
	return readLimited(p, limit)
}

// readLimited reads a regular file of at most limit bytes. It refuses
// anything else before reading it: a FIFO would block the loader, a device
// such as /dev/zero would never end, and a large file is no secret.
func readLimited(p string, limit int64) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &fs.PathError{Op: "read", Path: p, Err: errors.New("not a regular file")}
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		size := fmt.Sprintf("%d KiB", limit>>10)
		if limit >= 1<<20 {
			size = fmt.Sprintf("%d MiB", limit>>20)
		}
		return nil, &fs.PathError{Op: "read", Path: p, Err: errors.New("larger than " + size)}
	}
	return data, nil
}

// read returns the files read so far, sorted.
func (r *resolver) read() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.files))
	for f := range r.files {
		out = append(out, f)
	}
	slices.Sort(out)
	return out
}

// maxFileRef bounds a ${file:...} read: it holds a secret, not a payload.
const maxFileRef = 64 << 10

// expand replaces ${NAME} with an environment variable and ${file:/path}
// with a file's content less one trailing newline. $${ is a literal ${.
// A missing variable or file is an error, never an empty string.
func (r *resolver) expand(s string) (string, error) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		if i > 0 && s[i-1] == '$' { // $${ escapes
			b.WriteString(s[:i-1])
			b.WriteString("${")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("%q: unterminated ${", s[i:])
		}
		ref := s[i+2 : i+end]
		v, err := r.lookup(ref)
		if err != nil {
			return "", err
		}
		b.WriteString(v)
		s = s[i+end+1:]
	}
}

func (r *resolver) lookup(ref string) (string, error) {
	if path, ok := strings.CutPrefix(ref, "file:"); ok {
		if path == "" {
			return "", errors.New("${file:}: no path")
		}
		data, err := r.readFile(path, maxFileRef)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return "", fmt.Errorf("${file:%s}: %w", path, err)
		}
		if len(data) > maxFileRef {
			return "", fmt.Errorf("${file:%s}: larger than 64 KiB", path)
		}
		s := string(data)
		if t, ok := strings.CutSuffix(s, "\n"); ok {
			s = strings.TrimSuffix(t, "\r")
		}
		return s, nil
	}
	if !validEnvName(ref) {
		return "", fmt.Errorf("${%s}: not a variable name (use ${NAME} or ${file:/path}; $${ is a literal ${)", ref)
	}
	v, ok := r.getenv(ref)
	if !ok {
		return "", fmt.Errorf("${%s}: environment variable %s is not set", ref, ref)
	}
	return v, nil
}

// reread resolves a secret's reference again (a rotated file).
func (r *resolver) reread(s Secret) (string, error) {
	return r.expand(s.ref)
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
