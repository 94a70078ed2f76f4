package tokencache

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// MinScrubLength is the shortest value a Scrubber removes: anything shorter
// would garble every line it appears in, and is no secret anyway.
const MinScrubLength = 4

// Scrubber removes secrets from text bound for a log, an error or a
// terminal: every secret in every encoding the proxy itself sends it in.
// An authorization server that echoes what it received (in an
// error_description, an HTML page) gets it back in the form it was sent,
// so each secret is known as
//
//   - itself, form- and query-encoded (url.QueryEscape: "+" for a space),
//     path-encoded (%20), and JSON-escaped;
//   - base64 (standard and URL alphabets, padded and raw) of itself;
//   - for client credentials, base64 of "id:secret" both raw and with each
//     part form-encoded first (RFC 6749 §2.3.1), which is also what follows
//     "Basic " in the Authorization header.
//
// Static secrets (from the config) are added once; a token source keeps a
// slot of its own (its current refresh and access tokens) that it replaces
// as they rotate, so the set does not grow. A nil *Scrubber scrubs nothing.
// Safe for concurrent use; Scrub takes no lock.
type Scrubber struct {
	mu     sync.Mutex
	static map[string]bool
	slots  map[string][]string
	prev   map[string][]string // each slot's values before the last Set
	r      atomic.Pointer[strings.Replacer]
}

// NewScrubber returns a Scrubber that knows secrets.
func NewScrubber(secrets ...Secret) *Scrubber {
	s := &Scrubber{static: map[string]bool{}, slots: map[string][]string{}, prev: map[string][]string{}}
	s.Add(secrets...)
	return s
}

// Add makes the Scrubber remove secrets from now on.
func (s *Scrubber) Add(secrets ...Secret) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sec := range secrets {
		for _, v := range encodings(sec.Reveal()) {
			s.static[v] = true
		}
	}
	s.rebuild()
}

// AddClient makes the Scrubber remove the HTTP Basic credentials of id and
// secret, in both spellings, besides the secret itself.
func (s *Scrubber) AddClient(id string, secret Secret) {
	if s == nil || len(secret) < MinScrubLength {
		return
	}
	s.Add(secret)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range basicEncodings(id, secret.Reveal()) {
		s.static[v] = true
	}
	s.rebuild()
}

// Set replaces the secrets of one slot (a token source's current tokens).
func (s *Scrubber) Set(slot string, secrets ...Secret) {
	if s == nil {
		return
	}
	var vs []string
	for _, sec := range secrets {
		vs = append(vs, encodings(sec.Reveal())...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Equal(s.slots[slot], vs) {
		return
	}
	// The values before stay known one generation longer: a server may
	// echo the token it was sent just as the next one arrives.
	if old := s.slots[slot]; len(old) > 0 {
		s.prev[slot] = old
	}
	if len(vs) == 0 { // a reset: nothing of the slot is kept
		delete(s.slots, slot)
		delete(s.prev, slot)
	} else {
		s.slots[slot] = vs
	}
	s.rebuild()
}

// Scrub returns text with every known secret replaced by "[redacted]".
func (s *Scrubber) Scrub(text string) string {
	if s == nil {
		return text
	}
	if r := s.r.Load(); r != nil {
		return r.Replace(text)
	}
	return text
}

// ScrubFields scrubs a list that was one space-separated string (scopes):
// joined again, so that a secret holding spaces is found whole.
func (s *Scrubber) ScrubFields(fields []string) []string {
	if s == nil || fields == nil {
		return fields
	}
	return strings.Fields(s.Scrub(strings.Join(fields, " ")))
}

// rebuild makes the replacer anew; s.mu is held. Longer values go first so
// that a secret's encoding is removed whole, not after its plain part.
func (s *Scrubber) rebuild() {
	all := make([]string, 0, len(s.static))
	for v := range s.static {
		all = append(all, v)
	}
	for _, vs := range s.slots {
		all = append(all, vs...)
	}
	for _, vs := range s.prev {
		all = append(all, vs...)
	}
	slices.SortFunc(all, func(a, b string) int { return len(b) - len(a) })
	all = slices.Compact(all)
	if len(all) == 0 {
		s.r.Store(nil)
		return
	}
	pairs := make([]string, 0, 2*len(all))
	for _, v := range all {
		pairs = append(pairs, v, redacted)
	}
	s.r.Store(strings.NewReplacer(pairs...))
}

// encodings lists v as the proxy may send it: plain, form/query-, path- and
// JSON-escaped, and base64.
func encodings(v string) []string {
	if len(v) < MinScrubLength {
		return nil
	}
	out := []string{v, url.QueryEscape(v), url.PathEscape(v), jsonEscaped(v), jsonEscapedHTML(v)}
	out = append(out, base64s(v)...)
	return compact(out)
}

func basicEncodings(id, secret string) []string {
	var out []string
	for _, pair := range []string{id + ":" + secret, url.QueryEscape(id) + ":" + url.QueryEscape(secret)} {
		out = append(out, base64s(pair)...)
	}
	return compact(out)
}

func base64s(v string) []string {
	b := []byte(v)
	return []string{
		base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
	}
}

// jsonEscaped is v inside a JSON string as encoding/json writes it with
// HTML escaping off; jsonEscapedHTML with it on (the default).
func jsonEscaped(v string) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
	return strings.TrimSuffix(strings.TrimSuffix(b.String(), "\n"), `"`)[1:]
}

func jsonEscapedHTML(v string) string {
	out, _ := json.Marshal(v)
	return string(out[1 : len(out)-1])
}

func compact(vs []string) []string {
	slices.Sort(vs)
	vs = slices.Compact(vs)
	return slices.DeleteFunc(vs, func(v string) bool { return len(v) < MinScrubLength })
}
