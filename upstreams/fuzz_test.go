package upstreams

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: loading never panics, and a config that loads can be built.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/check/*.yaml")
	files = append(files, "../config.example.yaml")
	for _, name := range files {
		if data, err := os.ReadFile(name); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("oauth2: {x: {<<: [{token_url: 'https://i/t'}], client_id: c, client_secret: s}}\nroutes: [{prefix: /, upstream: 'https://u/', oauth2: x}]\n"))
	res := env("PRESENT", "x")
	res.ReadFile = func(string) ([]byte, error) { return []byte("file-value"), nil }
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data, res)
		if err != nil {
			return
		}
		// A store's directory is the machine's business (systemd's
		// StateDirectory, a volume), like a port in use: run names it.
		dir := t.TempDir()
		for _, o := range cfg.OAuth2 {
			if o != nil && o.Store != "" {
				o.Store = filepath.Join(dir, "tokens.db")
			}
		}
		rt, err := Build(cfg, nil, Options{})
		if err != nil {
			t.Fatalf("a config that loads does not build: %v\n%s", err, data)
		}
		rt.Close()
	})
}
