package ionapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"
)

// canary stands in for the seeds' SECRET, long and odd enough that no
// message Parse makes can hold it by chance.
const canary = "Zq9CANARYq7Xw"

// FuzzParse: Parse never panics; an error is made of Parse's own text only
// (the shape every test checks), never a value of the input; a File it
// returns keeps the promises of its doc comment.
func FuzzParse(f *testing.F) {
	seeds := []string{
		sample,
		"\xef\xbb\xbf" + strings.ReplaceAll(sample, "\n", "\r\n") + "\r\n",
		`{"ci":"SECRET","cs":"SECRET","pu":"https://SECRET.example.com/T/as/","ot":"token.oauth2","saak":"T#SECRET","sask":"SECRET"}`,
		`{"ci":"c","cs":"SECRET","pu":"https://h/","ot":"t","cs":"SECRET2"}`,
		`{"ci":"c","cs":"SECRET","pu":"SECRET","ot":"//SECRET/t","iu":"SECRET:1"}`,
		`{"ci":"c","cs":SECRET,"pu":"https://h/","ot":"t"}`,
		`{"ci":"c","cs":"SECRET\u0001","pu":"https://h/"`,
		`{"ci":"c","cs":"SEC\RET","pu":"https://h/","ot":"t"}`,
		`{"cs":"SECRET","saak":"SECRET","x":{"y":["SECRET",1,true,null]}}`,
		`{"ci":12,"cs":["SECRET"],"pu":{"SECRET":1},"ot":null}`,
		`["SECRET"]`, `"SECRET"`, `SECRET`, "", "\xef\xbb\xbf", "\xff\xfe{",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		data = bytes.ReplaceAll(data, []byte("SECRET"), []byte(canary))
		file, err := Parse(data)
		if err != nil {
			if file != nil {
				t.Fatalf("Parse returned a File and %v", err)
			}
			msg := err.Error()
			if strings.Contains(msg, "CANARY") {
				t.Fatalf("error %q holds a value of the input", msg)
			}
			checkShape(t, err)
			for _, e := range problems(t, err) {
				if e.Offset < -1 || e.Offset > int64(len(data)) || (e.Offset >= 0) != (e.Line > 0 && e.Col > 0) {
					t.Fatalf("%q: offset %d, line %d, col %d in %d bytes", e, e.Offset, e.Line, e.Col, len(data))
				}
				if !errors.Is(e, e.Err) || e.Err == nil {
					t.Fatalf("%q wraps no sentinel", e)
				}
			}
			var cs struct{ Cs any }
			if json.Unmarshal(bytes.TrimPrefix(data, bom), &cs) == nil {
				if s, ok := cs.Cs.(string); ok && len(s) >= 8 && strings.Contains(msg, s) {
					t.Fatalf("error %q holds the cs value %q", msg, s)
				}
			}
			return
		}
		if file.ClientID == "" || file.AuthServerURL == "" || file.TokenPath == "" {
			t.Fatalf("Parse accepted a file without ci, pu or ot: %q", data)
		}
		if (file.AccessKey == "") != (file.SecretKey == "") {
			t.Fatalf("Parse accepted half a service account: %q", data)
		}
		pu, err := url.Parse(file.AuthServerURL)
		if err != nil {
			t.Fatalf("accepted pu does not parse: %v", err)
		}
		for _, u := range []string{file.TokenURL(), file.AuthorizeURL(), file.RevokeURL()} {
			if u == "" {
				continue
			}
			j, err := url.Parse(u)
			if err != nil || j.Scheme != pu.Scheme || j.Host != pu.Host || j.RawQuery != "" || j.Fragment != "" {
				t.Fatalf("joined URL %q leaves pu %q (%v)", u, file.AuthServerURL, err)
			}
			if rest := strings.TrimPrefix(u, strings.TrimRight(file.AuthServerURL, "/")); !strings.HasPrefix(rest, "/") || strings.HasPrefix(rest, "//") {
				t.Fatalf("joined URL %q does not have exactly one / after pu %q", u, file.AuthServerURL)
			}
		}
	})
}
