package tokencache

import (
	"fmt"
	"io"
	"log/slog"
)

const redacted = "[redacted]"

// Secret is a string that never prints itself: fmt (every verb, %+v and %#v
// included), log/slog, encoding/json and encoding.TextMarshaler all see
// "[redacted]". Reveal is the one way to read it, so every place a secret
// leaves the process is a call to Reveal that a reviewer can find.
//
// The zero value is the empty secret.
type Secret string

// Reveal returns the secret's value.
func (s Secret) Reveal() string { return string(s) }

// String implements fmt.Stringer.
func (s Secret) String() string { return redacted }

// GoString implements fmt.GoStringer, for %#v.
func (s Secret) GoString() string { return `"` + redacted + `"` }

// Format implements fmt.Formatter so that no verb (%x, %q, %s...) prints the value.
func (s Secret) Format(f fmt.State, _ rune) { io.WriteString(f, redacted) }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText implements encoding.TextMarshaler (JSON, YAML and friends).
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
