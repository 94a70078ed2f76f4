package upstreams

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

func (r Resolver) getenv(k string) (string, bool) {
	if r.Getenv != nil {
		return r.Getenv(k)
	}
	return os.LookupEnv(k)
}

func (r Resolver) readFile(p string) ([]byte, error) {
	if !filepath.IsAbs(p) && r.Dir != "" {
		p = filepath.Join(r.Dir, p)
	}
	if r.ReadFile != nil {
		return r.ReadFile(p)
	}
	return os.ReadFile(p)
}

// maxFileRef bounds a ${file:...} read: it holds a secret, not a payload.
const maxFileRef = 64 << 10

// expand replaces ${NAME} with an environment variable and ${file:/path}
// with a file's content less one trailing newline. $${ is a literal ${.
// A missing variable or file is an error, never an empty string.
func (r Resolver) expand(s string) (string, error) {
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

func (r Resolver) lookup(ref string) (string, error) {
	if path, ok := strings.CutPrefix(ref, "file:"); ok {
		if path == "" {
			return "", errors.New("${file:}: no path")
		}
		data, err := r.readFile(path)
		if err != nil {
			var pe *os.PathError
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
