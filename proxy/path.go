package proxy

import (
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"
)

// targetPath returns the escaped path of r's request target, which must be
// in origin form (RFC 9112 §3.2.1). An absolute-form target
// (GET http://host/ HTTP/1.1) never selects an upstream: this is not a
// forward proxy.
func targetPath(r *http.Request) (string, bool) {
	u := r.RequestURI
	if u == "" { // a Request built in-process, not read off the wire
		u = r.URL.RequestURI()
	}
	if u == "" || u[0] != '/' {
		return "", false
	}
	if i := strings.IndexByte(u, '?'); i >= 0 {
		u = u[:i]
	}
	return u, true
}

// cleanPath checks an escaped path (empty, or starting with '/') and
// resolves its dot segments. It refuses, rather than repairs, anything a
// server behind the proxy could read differently from the proxy:
//
//   - encoded '/' or '\' (%2f, %5c), a literal '\', '#', control characters
//     raw or encoded (%00-%1f, %7f), and malformed escapes;
//   - encoded dot segments (%2e, .%2e, %2e%2e) and dot segments with path
//     parameters ("..;x", which Tomcat reads as "..");
//   - double-encoded dots, slashes and backslashes (%252e, %252f, %255c);
//   - percent-encoded bytes that are not UTF-8 (overlong %c0%ae reads as
//     "." on some servers);
//   - ".." that would climb above the path's root.
//
// Plain "." and ".." segments and empty segments are resolved. The result
// is p itself, without allocating, when p needs no change.
func cleanPath(p string) (string, bool) {
	if p == "" {
		return "", true
	}
	if p[0] != '/' {
		return "", false
	}
	rewrite, high := false, false
	segStart := 1
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			switch segmentKind(p[segStart:i]) {
			case segBad:
				return "", false
			case segEmpty:
				rewrite = rewrite || i < len(p) // a trailing slash is kept as it is
			case segDot, segDotDot:
				rewrite = true
			}
			segStart = i + 1
			continue
		}
		switch c := p[i]; {
		case c < 0x20 || c == 0x7f || c == '\\' || c == '#':
			return "", false
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return "", false
			}
			switch d := unhex(p[i+1])<<4 | unhex(p[i+2]); {
			case d == '/' || d == '\\' || d < 0x20 || d == 0x7f:
				return "", false
			case d >= 0x80:
				high = true
			case d == '%' && i+4 < len(p) && isHex(p[i+3]) && isHex(p[i+4]):
				switch unhex(p[i+3])<<4 | unhex(p[i+4]) {
				case '.', '/', '\\':
					return "", false
				}
			}
			i += 2
		}
	}
	if high {
		if dec, err := url.PathUnescape(p); err != nil || !utf8.ValidString(dec) {
			return "", false
		}
	}
	if !rewrite {
		return p, true
	}
	return resolveDots(p)
}

type segKind int

const (
	segName segKind = iota
	segEmpty
	segDot
	segDotDot
	segBad
)

// segmentKind says what an escaped path segment is for dot-segment purposes.
func segmentKind(seg string) segKind {
	if seg == "" {
		return segEmpty
	}
	base, params := seg, false
	if i := strings.IndexByte(seg, ';'); i >= 0 {
		base, params = seg[:i], true
	}
	dots, encoded := 0, false
	for i := 0; i < len(base); i++ {
		switch {
		case base[i] == '.':
			dots++
		case base[i] == '%' && i+2 < len(base) && base[i+1] == '2' && (base[i+2] == 'e' || base[i+2] == 'E'):
			dots++
			encoded = true
			i += 2
		default:
			return segName
		}
	}
	switch {
	case dots == 0 && params: // ";x": an empty segment with parameters
		return segBad
	case dots > 2:
		return segName // "..." is a name
	case encoded || params:
		return segBad
	case dots == 1:
		return segDot
	}
	return segDotDot
}

// resolveDots applies RFC 3986 §5.2.4 to a path already checked by
// cleanPath, failing if ".." would climb above the root.
func resolveDots(p string) (string, bool) {
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case "", ".":
			trailing = last
		case "..":
			if len(out) == 0 {
				return "", false
			}
			out = out[:len(out)-1]
			trailing = last
		default:
			out = append(out, s)
			trailing = false
		}
	}
	clean := "/" + strings.Join(out, "/")
	if trailing && len(out) > 0 {
		clean += "/"
	}
	return clean, true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
