package tokencache

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"
)

// spellings lists secret as the proxy sends it, and as an echoing server
// would repeat it.
func spellings(id, secret string) map[string]string {
	js, _ := json.Marshal(secret)
	basic := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	return map[string]string{
		"plain":               secret,
		"form-encoded":        url.QueryEscape(secret),
		"path-encoded":        url.PathEscape(secret),
		"JSON-escaped":        string(js[1 : len(js)-1]),
		"base64":              base64.StdEncoding.EncodeToString([]byte(secret)),
		"base64url raw":       base64.RawURLEncoding.EncodeToString([]byte(secret)),
		"basic id:secret":     basic(id + ":" + secret),
		"basic form-escaped":  basic(url.QueryEscape(id) + ":" + url.QueryEscape(secret)),
		"authorization value": "Basic " + basic(url.QueryEscape(id)+":"+url.QueryEscape(secret)),
	}
}

func TestScrubberEncodings(t *testing.T) {
	for _, secret := range []string{"p@ss w/rd+=&\"<>", "plainsecretvalue", "ünïcödé-sëcret", `back\slash"quote`} {
		sc := NewScrubber()
		sc.AddClient("my app", Secret(secret))
		for name, v := range spellings("my app", secret) {
			text := "before " + v + " after"
			if got := sc.Scrub(text); strings.Contains(got, v) || !strings.Contains(got, "before") {
				t.Errorf("secret %q, %s spelling %q: Scrub = %q", secret, name, v, got)
			}
		}
	}
}

func TestScrubberSlots(t *testing.T) {
	sc := NewScrubber("static-secret")
	sc.Set("a", "refresh-one")
	sc.Set("a", "refresh-two")
	sc.Set("a", "refresh-three")
	sc.Set("b", "other-token")
	// A slot's values and the ones just before them are removed; older
	// ones are forgotten, so that the set stays bounded.
	got := sc.Scrub("static-secret refresh-one refresh-two refresh-three other-token")
	if got != "[redacted] refresh-one [redacted] [redacted] [redacted]" {
		t.Errorf("Scrub = %q", got)
	}
	sc.Set("b")
	if got := sc.Scrub("other-token"); got != "other-token" {
		t.Errorf("an emptied slot still scrubs: %q", got)
	}
	var none *Scrubber
	if none.Scrub("x") != "x" {
		t.Error("a nil Scrubber changed the text")
	}
}

// FuzzScrubber: whatever the secret, none of its spellings survives.
func FuzzScrubber(f *testing.F) {
	f.Add("client", "s3cr3t+/=", "prefix ", " suffix")
	f.Add("a b", "ü€\"\\<>&", "", "")
	f.Add("id", "aaaa", "aaa", "a")
	f.Fuzz(func(t *testing.T, id, secret, before, after string) {
		if len(secret) < MinScrubLength || !utf8.ValidString(secret) || !utf8.ValidString(id) {
			return
		}
		sc := NewScrubber()
		sc.AddClient(id, Secret(secret))
		for name, v := range spellings(id, secret) {
			got := sc.Scrub(before + v + after)
			// What is left may not hold the secret's spelling, unless the
			// surrounding text itself makes it up again around a
			// "[redacted]"-free remainder.
			if strings.Contains(got, v) && !strings.Contains(before+after, v) && !strings.Contains(redacted, v) {
				t.Fatalf("%s spelling %q of %q survived: %q", name, v, secret, got)
			}
		}
	})
}
