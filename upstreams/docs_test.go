package upstreams_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oauthproxy/oauthproxy/upstreams"
)

// The docs promise that their examples pass `oauthproxy check`. This test
// holds them to it.
//
// Convention: a fenced block opened with ```yaml whose first line is a
// comment starting with "# check:" is a whole config file, and must load
// without a problem; the rest of that line says, for the reader, what the
// example is. Blocks without the marker are fragments (a few keys shown
// out of context) and are not loaded. Warnings are allowed, as check
// allows them, and are logged.
//
// References resolve to fake values, so that no example needs a real
// secret:
//
//   - ${NAME}: a valid store key (base64 of 32 bytes) when NAME contains
//     KEY, else "fake-name";
//   - ${file:PATH}: the same store key when the file's base name contains
//     "key", else a fake secret;
//   - ionapi_file: a generated, valid .ionapi file written to a temporary
//     directory: with a service account (saak, sask) when the base name
//     contains "service", else a client of its own (with oa and or, for
//     the authorization code grant and revocation).
const checkMarker = "# check:"

// fakeStoreKey is base64 of 32 bytes with no '+' or '/', so that it also
// fits where an example puts a variable in a URL.
const fakeStoreKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// docExample is one checked YAML block of a Markdown file.
type docExample struct {
	file  string // the Markdown file
	line  int    // the line of the block's first YAML line
	title string // what follows the marker
	yaml  string
}

func TestDocsExamples(t *testing.T) {
	docs := filepath.Join("..", "docs")
	var examples []docExample
	perFile := map[string]int{}
	err := filepath.WalkDir(docs, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".md") {
			return err
		}
		ex, err := checkedBlocks(path, strings.TrimPrefix(filepath.ToSlash(path), "../"))
		if err != nil {
			return err
		}
		examples = append(examples, ex...)
		perFile[path] = len(ex)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Every platform page shows a configuration that loads.
	pages, err := filepath.Glob(filepath.Join(docs, "platforms", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) == 0 {
		t.Errorf("no pages in %s", filepath.Join(docs, "platforms"))
	}
	for _, p := range pages {
		if perFile[p] == 0 {
			t.Errorf("%s has no ```yaml block marked %q: every platform page needs a checked example", p, checkMarker)
		}
	}

	res := docsResolver(t)
	for _, ex := range examples {
		t.Run(fmt.Sprintf("%s:%d", strings.TrimPrefix(ex.file, "docs/"), ex.line), func(t *testing.T) {
			t.Log(ex.title)
			cfg, err := upstreams.Parse(ex.file, []byte(ex.yaml), res)
			var probs upstreams.Problems
			switch {
			case errors.As(err, &probs):
				for _, p := range probs {
					// Lines of the block, shifted to lines of the page.
					t.Errorf("%s:%d:%d: %s", ex.file, ex.line+p.Line-1, p.Col, p.Msg)
				}
				return
			case err != nil:
				t.Fatalf("%s:%d: %v", ex.file, ex.line, err)
			}
			for _, w := range cfg.Warnings {
				t.Logf("%s:%d:%d: warning: %s", ex.file, ex.line+w.Line-1, w.Col, w.Msg)
			}
			// The resolver's two .ionapi variants reached the entries
			// as the file names promise.
			for name, o := range cfg.OAuth2 {
				_, setGrant := o.Pos["grant_type"]
				if o.IonAPIFile == "" || setGrant {
					continue
				}
				want := upstreams.GrantType("client_credentials")
				if strings.Contains(strings.ToLower(filepath.Base(o.IonAPIFile)), "service") {
					want = "password"
				}
				if o.GrantType != want {
					t.Errorf("oauth2.%s (ionapi_file %s): grant_type %s, want %s", name, o.IonAPIFile, o.GrantType, want)
				}
			}
		})
	}
}

// checkedBlocks returns the yaml blocks of a Markdown file that start with
// the marker; name is the file as messages show it.
func checkedBlocks(path, name string) ([]docExample, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		out   []docExample
		cur   *docExample
		body  strings.Builder
		inAny bool // inside some fenced block (another language too)
		n     int
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		fence := strings.HasPrefix(strings.TrimSpace(line), "```")
		switch {
		case !inAny && fence:
			inAny = true
			if strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "```")) == "yaml" {
				cur = &docExample{file: name, line: n + 1}
				body.Reset()
			}
		case inAny && fence:
			inAny = false
			if cur != nil {
				first, _, _ := strings.Cut(body.String(), "\n")
				if title, ok := strings.CutPrefix(strings.TrimSpace(first), checkMarker); ok {
					cur.title = strings.TrimSpace(title)
					cur.yaml = body.String()
					out = append(out, *cur)
				}
				cur = nil
			}
		case cur != nil:
			body.WriteString(line)
			body.WriteByte('\n')
		}
	}
	if inAny {
		return nil, errors.New(path + ": a fenced block is not closed")
	}
	return out, sc.Err()
}

// docsResolver answers every reference with a fake value (see the
// convention above) and serves generated .ionapi files from a temporary
// directory.
func docsResolver(t *testing.T) upstreams.Resolver {
	dir := t.TempDir()
	ionapi := map[string]string{
		"ti": "ACME_PRD", "cn": "oauthproxy", "dt": "12",
		"ci": "ACME_PRD~fake-client-id", "cs": "fake-client-secret",
		"iu": "https://mingle-ionapi.inforcloudsuite.com",
		"pu": "https://mingle-sso.inforcloudsuite.com:443/ACME_PRD/as/",
		"oa": "authorization.oauth2", "ot": "token.oauth2", "or": "revoke_token.oauth2",
		"ev": "U1234567890", "v": "1.0",
	}
	write := func(name string, m map[string]string) {
		data, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("client.ionapi", ionapi)
	ionapi["saak"], ionapi["sask"] = "ACME_PRD#fake-access-key", "fake-secret-key"
	write("service.ionapi", ionapi)

	return upstreams.Resolver{
		Dir: dir,
		Getenv: func(name string) (string, bool) {
			if strings.Contains(name, "KEY") {
				return fakeStoreKey, true
			}
			return "fake-" + strings.ToLower(name), true
		},
		ReadFile: func(path string) ([]byte, error) {
			base := strings.ToLower(filepath.Base(path))
			switch {
			case strings.HasSuffix(base, ".ionapi") && strings.Contains(base, "service"):
				return os.ReadFile(filepath.Join(dir, "service.ionapi"))
			case strings.HasSuffix(base, ".ionapi"):
				return os.ReadFile(filepath.Join(dir, "client.ionapi"))
			case strings.Contains(base, "key"):
				return []byte(fakeStoreKey + "\n"), nil
			}
			return []byte("fake-secret-from-" + base + "\n"), nil
		},
	}
}
