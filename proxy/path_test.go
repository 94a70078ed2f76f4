package proxy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

func TestCleanPath(t *testing.T) {
	tests := []struct {
		in   string
		want string // "!" means refused
	}{
		{"", ""},
		{"/", "/"},
		{"/a/b", "/a/b"},
		{"/a/b/", "/a/b/"},
		{"/a%20b/c", "/a%20b/c"},
		{"/file;v=1", "/file;v=1"},
		{"/a/./b", "/a/b"},
		{"/a/../b", "/b"},
		{"/a/b/..", "/a/"},
		{"/a/b/../", "/a/"},
		{"/a//b", "/a/b"},
		{"/...", "/..."},
		{"/a/.../b", "/a/.../b"},
		{"/.well-known/x", "/.well-known/x"},
		{"/..", "!"},
		{"/../admin", "!"},
		{"/a/../../admin", "!"},
		{"/%2e%2e/admin", "!"},
		{"/%2E%2E/admin", "!"},
		{"/.%2e/admin", "!"},
		{"/%2e/admin", "!"},
		{"/a%2fb", "!"},
		{"/a%2Fb", "!"},
		{"/a%5cb", "!"},
		{"/a\\b", "!"},
		{"/..\\admin", "!"},
		{"/a%00b", "!"},
		{"/a%0ab", "!"},
		{"/a%7fb", "!"},
		{"/a\x01b", "!"},
		{"/a%zzb", "!"},
		{"/a%2", "!"},
		{"/a%", "!"},
		{"/..;/admin", "!"},
		{"/.;/admin", "!"},
		{"/;x/admin", "!"},
		{"/%252e%252e/admin", "!"},
		{"/%252f", "!"},
		{"/%255c", "!"},
		{"/%25/ok", "/%25/ok"},
		{"/a#frag", "!"},
		{"/%c0%ae%c0%ae/admin", "!"},
		{"/%e0%80%ae", "!"},
		{"/%ff", "!"},
		{"/caf%c3%a9", "/caf%c3%a9"},
		{"/%e2%82%ac", "/%e2%82%ac"},
		{"no-slash", "!"},
	}
	for _, tc := range tests {
		got, ok := cleanPath(tc.in)
		if !ok {
			got = "!"
		}
		if got != tc.want {
			t.Errorf("cleanPath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestMatch(t *testing.T) {
	var rs []*route
	for _, p := range []string{"/", "/svc/", "/svc/v2", "/other", "/a/b/c/d"} {
		rs = append(rs, &route{Route: Route{Prefix: p}, prefix: strings.TrimRight(p, "/")})
	}
	tab := tableOf(rs...)
	tests := []struct {
		path, prefix, rest string
	}{
		{"/svc", "/svc/", ""},
		{"/svc/", "/svc/", "/"},
		{"/svc/x", "/svc/", "/x"},
		{"/svcx", "/", "/svcx"},
		{"/svc/v2", "/svc/v2", ""},
		{"/svc/v2/a", "/svc/v2", "/a"},
		{"/svc/v20", "/svc/", "/v20"},
		{"/SVC/x", "/", "/SVC/x"},
		{"/other/x", "/other", "/x"},
		{"/", "/", "/"},
		{"/a/b/c/d/e/f", "/a/b/c/d", "/e/f"},
		{"/a/b/c", "/", "/a/b/c"},
		{"/svc//x", "/svc/", "//x"},
	}
	for _, tc := range tests {
		rt, rest := tab.match(tc.path)
		if rt == nil || rt.Prefix != tc.prefix || rest != tc.rest {
			var got string
			if rt != nil {
				got = rt.Prefix
			}
			t.Errorf("match(%q) = %q, %q; want %q, %q", tc.path, got, rest, tc.prefix, tc.rest)
		}
	}
}

// tableOf is a Table of routes made by hand, for matching alone.
func tableOf(rs ...*route) *Table {
	t := &Table{routes: map[string]*route{}}
	for _, rt := range rs {
		t.routes[rt.prefix] = rt
		t.depth = max(t.depth, strings.Count(rt.prefix, "/"))
	}
	return t
}

func TestTargetPath(t *testing.T) {
	tests := []struct {
		uri  string
		want string
		ok   bool
	}{
		{"/a/b?x=1", "/a/b", true},
		{"/a?", "/a", true},
		{"http://evil/a", "", false},
		{"*", "", false},
		{"example.com:443", "", false},
	}
	for _, tc := range tests {
		r := &http.Request{RequestURI: tc.uri}
		got, ok := targetPath(r)
		if got != tc.want || ok != tc.ok {
			t.Errorf("targetPath(%q) = %q, %v; want %q, %v", tc.uri, got, ok, tc.want, tc.ok)
		}
	}
}

// FuzzRoutePath checks that whatever the path, the upstream path stays
// under the route's base and under the matched prefix, and that nothing
// panics.
func FuzzRoutePath(f *testing.F) {
	for _, s := range []string{"/api/a/b", "/api/../admin", "/api/%2e%2e/x", "/api/a%2fb", "/api/..;/x", "/api//x", "/apix", "/api", "/", "/api/./", "/api/a/../../b"} {
		f.Add(s)
	}
	var rs []*route
	for _, p := range []string{"/api/", "/admin/", "/api/v2/deep/"} {
		up := "/base"
		rs = append(rs, &route{Route: Route{Prefix: p, StripPrefix: true}, prefix: strings.TrimRight(p, "/"), base: up, root: up + "/"})
	}
	tab := tableOf(rs...)
	f.Fuzz(func(t *testing.T, p string) {
		if !strings.HasPrefix(p, "/") {
			p = "/" + p
		}
		rt, rest := tab.match(p)
		if rt == nil {
			return
		}
		if !strings.HasPrefix(p, rt.prefix) || !strings.HasPrefix(rest+"/", "/") {
			t.Fatalf("match(%q) chose %q", p, rt.prefix)
		}
		// No longer prefix matches whole segments.
		for _, other := range tab.routes {
			if len(other.prefix) > len(rt.prefix) && strings.HasPrefix(p, other.prefix) && (len(p) == len(other.prefix) || p[len(other.prefix)] == '/') {
				t.Fatalf("match(%q) chose %q over the longer %q", p, rt.prefix, other.prefix)
			}
		}
		out, ok := rt.outPath(rest)
		if !ok {
			return
		}
		if out != rt.root && !strings.HasPrefix(out, rt.base+"/") {
			t.Fatalf("outPath(%q) = %q escapes base %q", p, out, rt.base)
		}
		for _, seg := range strings.Split(out, "/") {
			if seg == ".." || seg == "." {
				t.Fatalf("outPath(%q) = %q keeps a dot segment", p, out)
			}
			if lower := strings.ToLower(seg); strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") || strings.Contains(lower, "%2e") && strings.Trim(strings.ReplaceAll(lower, "%2e", "."), ".") == "" {
				t.Fatalf("outPath(%q) = %q keeps an encoded separator or dot segment", p, out)
			}
		}
		if strings.ContainsAny(out, "\\\x00\r\n#") {
			t.Fatalf("outPath(%q) = %q holds a forbidden byte", p, out)
		}
	})
}

// BenchmarkRouting: matching a request path against tables of 1, 100 and
// 10,000 routes. The cost depends on the path's depth, not on the table's
// size (goal: flat ns/op, 0 allocs/op).
func BenchmarkRouting(b *testing.B) {
	for _, n := range []int{1, 100, 10_000} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			var rs []*route
			for i := range n {
				p := fmt.Sprintf("/svc%d/v1", i)
				rs = append(rs, &route{Route: Route{Prefix: p}, prefix: p})
			}
			tab := tableOf(rs...)
			path := fmt.Sprintf("/svc%d/v1/orders/42/lines", n/2)
			b.ReportAllocs()
			for b.Loop() {
				if rt, _ := tab.match(path); rt == nil {
					b.Fatal("no match")
				}
			}
		})
	}
}
