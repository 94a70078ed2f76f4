// Package ionapi reads Infor ION API credentials files (.ionapi), the JSON
// file that Infor's ION API Gateway hands out for a backend service or a
// service account (issue 8, item 1).
//
// The file is a secret as a whole: no error of this package holds any value
// read from it, only key names and byte offsets, so that a caller can print
// an error next to the `ionapi_file` line of its config without leaking.
package ionapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"slices"
	"strings"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// File is a parsed .ionapi file. A File that Parse returned has ClientID,
// AuthServerURL and TokenPath set, and AccessKey and SecretKey both set or
// both empty. An empty string means the key was absent or empty in the file.
//
// Printing a *File (fmt, log/slog) shows only its URLs and the names of the
// keys it has.
type File struct {
	Tenant       string            // ti
	ClientName   string            // cn
	ClientID     string            // ci
	ClientSecret tokencache.Secret // cs; empty for a public client, which the caller may refuse
	// IONBaseURL is the ION API Gateway (iu); a route's upstream is
	// <iu>/<ti>/<product path>. When set, it is an absolute http(s) URL.
	IONBaseURL string
	// AuthServerURL is the authorization server's base URL (pu), an absolute
	// http or https URL with a host and no user info, query or fragment.
	// Whether http is acceptable (loopback, insecure_http) is the caller's
	// call.
	AuthServerURL string
	AuthorizePath string // oa, relative to pu
	TokenPath     string // ot, relative to pu
	RevokePath    string // or, relative to pu
	// AccessKey and SecretKey (saak, sask) are a service account's: the
	// password grant's username (it carries the tenant prefix already, sent
	// as is) and password.
	AccessKey tokencache.Secret
	SecretKey tokencache.Secret
	// Other holds every key this package does not read (ev, v, dt, ...),
	// kept as written. Treat its values as secret.
	Other map[string]json.RawMessage
}

// key is one key that File holds.
type key struct {
	name, what string
	field      func(*File) *string
	base       bool // an absolute URL (pu, iu)
	path       bool // a path joined to pu (oa, ot, or)
	required   bool
}

func secretField(f func(*File) *tokencache.Secret) func(*File) *string {
	return func(fl *File) *string { return (*string)(f(fl)) }
}

var keys = []key{
	{name: "ti", what: "tenant", field: func(f *File) *string { return &f.Tenant }},
	{name: "cn", what: "client name", field: func(f *File) *string { return &f.ClientName }},
	{name: "ci", what: "client id", field: func(f *File) *string { return &f.ClientID }, required: true},
	{name: "cs", what: "client secret", field: secretField(func(f *File) *tokencache.Secret { return &f.ClientSecret })},
	{name: "iu", what: "ION API base URL", field: func(f *File) *string { return &f.IONBaseURL }, base: true},
	{name: "pu", what: "authorization server URL", field: func(f *File) *string { return &f.AuthServerURL }, base: true, required: true},
	{name: "oa", what: "authorize path", field: func(f *File) *string { return &f.AuthorizePath }, path: true},
	{name: "ot", what: "token path", field: func(f *File) *string { return &f.TokenPath }, path: true, required: true},
	{name: "or", what: "revoke path", field: func(f *File) *string { return &f.RevokePath }, path: true},
	{name: "saak", what: "service account access key", field: secretField(func(f *File) *tokencache.Secret { return &f.AccessKey })},
	{name: "sask", what: "service account secret key", field: secretField(func(f *File) *tokencache.Secret { return &f.SecretKey })},
}

func lookup(name string) *key {
	for i := range keys {
		if keys[i].name == name {
			return &keys[i]
		}
	}
	return nil
}

// Sentinels that an *Error wraps, for errors.Is.
var (
	ErrEmpty          = errors.New("empty file")
	ErrMalformed      = errors.New("malformed JSON")
	ErrDuplicateKey   = errors.New("duplicate key")
	ErrWrongType      = errors.New("wrong type")
	ErrMissingKey     = errors.New("missing key")
	ErrBadURL         = errors.New("bad URL")
	ErrServiceAccount = errors.New("incomplete service account")
)

// Error is one problem with a .ionapi file. Its message names the key and
// the place, never a value from the file.
type Error struct {
	Key string // the key at fault; "" when the problem is the file's
	// Offset is the 0-based byte offset in the file (a BOM counts) where the
	// problem is, and Line and Col (1-based, Col in bytes, a BOM not
	// counted) the same place; Offset is -1 and Line and Col 0 when there is
	// no one place, as for a missing key.
	Offset    int64
	Line, Col int
	Err       error  // one of the Err... sentinels
	Msg       string // what is wrong, without the place
}

func (e *Error) Error() string {
	if e.Offset < 0 {
		return e.Msg
	}
	return fmt.Sprintf("%s at byte %d (line %d, column %d)", e.Msg, e.Offset, e.Line, e.Col)
}

func (e *Error) Unwrap() error { return e.Err }

var bom = []byte("\xef\xbb\xbf")

// Parse reads a .ionapi file. Infor's Windows tools write a UTF-8 byte order
// mark, which is skipped. ci, pu and ot are required; cs is not, so that the
// caller decides whether a public client is acceptable. Keys are
// case-sensitive, as Infor writes them; unknown keys go to File.Other.
//
// On failure the error is an *Error, or errors.Join of several when the file
// is well-formed JSON with more than one problem (errors.As finds the first).
func Parse(data []byte) (*File, error) {
	base := 0
	if bytes.HasPrefix(data, bom) {
		base = len(bom)
	}
	body := data[base:]
	at := func(idx int) (off int64, line, col int) {
		idx = max(0, min(idx, len(body)))
		nl := bytes.LastIndexByte(body[:idx], '\n')
		return int64(base + idx), 1 + bytes.Count(body[:idx], []byte{'\n'}), idx - nl
	}
	fail := func(idx int, name string, sentinel error, format string, args ...any) *Error {
		e := &Error{Key: name, Offset: -1, Err: sentinel, Msg: fmt.Sprintf(format, args...)}
		if idx >= 0 {
			e.Offset, e.Line, e.Col = at(idx)
		}
		return e
	}

	if len(bytes.Trim(body, " \t\r\n")) == 0 {
		return nil, fail(-1, "", ErrEmpty, "the file is empty")
	}
	if bytes.HasPrefix(body, []byte{0xff, 0xfe}) || bytes.HasPrefix(body, []byte{0xfe, 0xff}) {
		return nil, fail(0, "", ErrMalformed, "the file is UTF-16 encoded; save it as UTF-8")
	}
	// Unmarshal checks the whole input before it decodes anything, so its
	// SyntaxError has the offset of the first bad byte; the Decoder below
	// then walks input known to be well-formed.
	var raw json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, syntaxError(err, len(body), fail)
	}
	if raw[0] != '{' {
		return nil, fail(skip(body, 0, " \t\r\n"), "", ErrMalformed, "the file holds JSON %s, not an object", kind(raw))
	}

	f := &File{}
	// Where each key's first occurrence, and its value, start.
	seen, valueAt := map[string]int{}, map[string]int{}
	var errs []*Error
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil { // '{'
		return nil, fail(0, "", ErrMalformed, "malformed JSON")
	}
	for dec.More() {
		keyAt := skip(body, int(dec.InputOffset()), " \t\r\n,")
		tok, err := dec.Token()
		name, ok := tok.(string)
		if err != nil || !ok {
			return nil, fail(keyAt, "", ErrMalformed, "malformed JSON")
		}
		vAt := skip(body, int(dec.InputOffset()), " \t\r\n:")
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fail(vAt, "", ErrMalformed, "malformed JSON")
		}
		k := lookup(name)
		if _, dup := seen[name]; dup {
			// An unknown key is not named: it came from the file.
			if k != nil {
				errs = append(errs, fail(keyAt, name, ErrDuplicateKey, "duplicate key %q (%s)", name, k.what))
			} else {
				errs = append(errs, fail(keyAt, "", ErrDuplicateKey, "duplicate key (one oauthproxy does not read)"))
			}
			continue
		}
		seen[name], valueAt[name] = keyAt, vAt
		if k == nil {
			if f.Other == nil {
				f.Other = map[string]json.RawMessage{}
			}
			f.Other[name] = v
			continue
		}
		if v[0] != '"' {
			errs = append(errs, fail(vAt, name, ErrWrongType, "key %q (%s) must be a string, not %s", name, k.what, kind(v)))
			continue
		}
		if err := json.Unmarshal(v, k.field(f)); err != nil {
			errs = append(errs, fail(vAt, name, ErrMalformed, "key %q (%s) is not a valid JSON string", name, k.what))
		}
	}

	// The checks of values; a problem with a value points at the value.
	for i := range keys {
		k := &keys[i]
		v, pos := *k.field(f), -1
		_, present := seen[k.name]
		if present {
			pos = valueAt[k.name]
		}
		switch {
		case !present && k.required:
			errs = append(errs, fail(-1, k.name, ErrMissingKey, "missing key %q (%s)", k.name, k.what))
		case v == "" && k.required && !hasError(errs, k.name):
			errs = append(errs, fail(pos, k.name, ErrMissingKey, "key %q (%s) is empty", k.name, k.what))
		case v == "":
		case k.base:
			if msg := checkBase(v); msg != "" {
				errs = append(errs, fail(pos, k.name, ErrBadURL, "key %q (%s) %s", k.name, k.what, msg))
			}
		case k.path:
			if msg := checkPath(v); msg != "" {
				errs = append(errs, fail(pos, k.name, ErrBadURL, "key %q (%s) %s", k.name, k.what, msg))
			}
		}
	}
	if (f.AccessKey == "") != (f.SecretKey == "") && !hasError(errs, "saak") && !hasError(errs, "sask") {
		has, lacks := "saak", "sask"
		if f.AccessKey == "" {
			has, lacks = lacks, has
		}
		errs = append(errs, fail(seen[has], has, ErrServiceAccount,
			"key %q is set but %q is not: a service account needs both", has, lacks))
	}
	switch len(errs) {
	case 0:
		return f, nil
	case 1:
		return nil, errs[0]
	}
	slices.SortStableFunc(errs, func(a, b *Error) int { return cmpOffset(a.Offset, b.Offset) })
	joined := make([]error, len(errs))
	for i, e := range errs {
		joined[i] = e
	}
	return nil, errors.Join(joined...)
}

// cmpOffset orders errors by place, those with none (-1) last.
func cmpOffset(a, b int64) int {
	switch {
	case a == b:
		return 0
	case a < 0:
		return 1
	case b < 0:
		return -1
	case a < b:
		return -1
	}
	return 1
}

func hasError(errs []*Error, name string) bool {
	return slices.ContainsFunc(errs, func(e *Error) bool { return e.Key == name })
}

func skip(b []byte, i int, set string) int {
	for i < len(b) && strings.IndexByte(set, b[i]) >= 0 {
		i++
	}
	return i
}

// kind names the JSON type of a well-formed value.
func kind(v json.RawMessage) string {
	switch v[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// syntaxError turns the json package's error into one without the
// offending character: encoding/json quotes it, and it may be part of a
// secret.
func syntaxError(err error, n int, fail func(int, string, error, string, ...any) *Error) *Error {
	var se *json.SyntaxError
	if !errors.As(err, &se) {
		return fail(-1, "", ErrMalformed, "malformed JSON")
	}
	// Offset counts the bytes read, the bad one included.
	idx := int(se.Offset) - 1
	msg := se.Error()
	if msg == "unexpected end of JSON input" || errors.Is(err, io.ErrUnexpectedEOF) {
		idx = n
	}
	if why := describe(msg); why != "" {
		return fail(idx, "", ErrMalformed, "malformed JSON (%s)", why)
	}
	return fail(idx, "", ErrMalformed, "malformed JSON")
}

// syntaxReasons says in words what encoding/json's messages (matched by
// the first part they contain) say, leaving out the character they quote.
var syntaxReasons = [...]struct{ part, why string }{
	{"unexpected end of JSON input", "the file ends before the JSON does"},
	{"after top-level value", "more after the closing brace"},
	{"looking for beginning of object key string", "expected a key in double quotes"},
	{"after object key:value pair", "expected a comma or a closing brace after a value"},
	{"after object key", "expected a colon after a key"},
	{"after array element", "expected a comma or a closing bracket after an array element"},
	{"looking for beginning of value", "expected a value"},
	{"in string literal", "a control character inside a string"},
	{"in string escape code", "a bad escape sequence inside a string"},
	{"in \\u hexadecimal character escape", "a bad \\u escape inside a string"},
	{"in numeric literal", "a malformed number"},
	{"in literal ", "a misspelt true, false or null"},
	{"exceeded max depth", "nested too deeply"},
}

func describe(msg string) string {
	for _, r := range syntaxReasons {
		if strings.Contains(msg, r.part) {
			return r.why
		}
	}
	return ""
}

// checkBase says what is wrong with a base URL (pu, iu), in words that hold
// none of it: "" if nothing.
func checkBase(s string) string {
	if strings.TrimSpace(s) != s {
		return "has leading or trailing spaces"
	}
	u, err := url.Parse(s)
	switch {
	case !strings.Contains(s, "://"):
		return "is not an absolute http or https URL"
	case err != nil, u.Opaque != "":
		return "is not a URL"
	case u.Scheme != "http" && u.Scheme != "https":
		return "is not an absolute http or https URL"
	case u.Host == "":
		return "has no host"
	case u.User != nil:
		return "must not hold a user name or password"
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(s, "#"):
		return "must not have a query or fragment"
	}
	return ""
}

// checkPath says what is wrong with a path to join to pu: "" if nothing.
func checkPath(s string) string {
	if strings.TrimSpace(s) != s {
		return "has leading or trailing spaces"
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "is not a URL path"
	case u.Scheme != "" || u.Host != "" || strings.HasPrefix(s, "//"):
		return "must be a path relative to pu, not a URL"
	case strings.ContainsAny(s, "?#"):
		return "must not have a query or fragment"
	}
	return ""
}

// join puts exactly one '/' between base and path, whether base ends with
// one and path starts with one or not. Infor's samples concatenate pu and
// ot, which works because pu ends in '/' and ot does not start with one; a
// hand-edited file may have either, or both.
func join(base, path string) string {
	if path == "" {
		return ""
	}
	return strings.TrimRight(base, "/") + "/" + strings.TrimLeft(path, "/")
}

// TokenURL is pu joined with ot.
func (f *File) TokenURL() string { return join(f.AuthServerURL, f.TokenPath) }

// AuthorizeURL is pu joined with oa, or "" when the file has no oa.
func (f *File) AuthorizeURL() string { return join(f.AuthServerURL, f.AuthorizePath) }

// RevokeURL is pu joined with or, or "" when the file has no or.
func (f *File) RevokeURL() string { return join(f.AuthServerURL, f.RevokePath) }

// ServiceAccount reports whether the file carries a service account (saak
// and sask), for the password grant; without one it is for
// client_credentials.
func (f *File) ServiceAccount() bool { return f.AccessKey != "" && f.SecretKey != "" }

// Keys returns the names of the keys the file has, known and unknown, in
// sorted order (for messages such as which keys an entry overrides).
func (f *File) Keys() []string {
	var names []string
	for i := range keys {
		if *keys[i].field(f) != "" {
			names = append(names, keys[i].name)
		}
	}
	for name := range f.Other {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Format implements fmt.Formatter: every verb prints the URLs and the key
// names only, since everything else in the file is secret.
func (f *File) Format(s fmt.State, _ rune) {
	if f == nil {
		io.WriteString(s, "<nil>")
		return
	}
	fmt.Fprintf(s, "ionapi.File{pu: %q, oa: %q, ot: %q, or: %q, iu: %q, keys: %q}",
		f.AuthServerURL, f.AuthorizePath, f.TokenPath, f.RevokePath, f.IONBaseURL, f.Keys())
}

// LogValue implements slog.LogValuer, with what Format prints.
func (f *File) LogValue() slog.Value {
	if f == nil {
		return slog.StringValue("<nil>")
	}
	return slog.GroupValue(
		slog.String("pu", f.AuthServerURL),
		slog.String("token_url", f.TokenURL()),
		slog.String("iu", f.IONBaseURL),
		slog.Any("keys", f.Keys()),
	)
}

// MarshalJSON implements json.Marshaler with what LogValue shows, so that
// a File put in a JSON document by mistake holds no secret.
func (f *File) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{
		"pu": f.AuthServerURL, "token_url": f.TokenURL(), "iu": f.IONBaseURL, "keys": f.Keys(),
	})
}
