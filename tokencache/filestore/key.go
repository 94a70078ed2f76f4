package filestore

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// ParseKey decodes a store_key value: base64, standard or URL alphabet,
// padded or not, of exactly KeySize bytes. Surrounding white space (the
// newline at the end of a key file) is ignored. Its errors never hold the
// value.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("the key is empty; make one with: openssl rand -base64 32")
	}
	var key []byte
	for _, enc := range []*base64.Encoding{
		base64.StdEncoding, base64.RawStdEncoding,
		base64.URLEncoding, base64.RawURLEncoding,
	} {
		if b, err := enc.Strict().DecodeString(s); err == nil {
			key = b
			break
		}
	}
	switch {
	case key == nil:
		return nil, fmt.Errorf("the key (%d characters) is not base64 (standard or URL alphabet); make one with: openssl rand -base64 32", len(s))
	case len(key) != KeySize:
		return nil, fmt.Errorf("the key is %d bytes once decoded from base64, want %d (AES-256); make one with: openssl rand -base64 32", len(key), KeySize)
	}
	return key, nil
}
