package tokencache

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestSecretNeverPrints(t *testing.T) {
	const canary = "canary-secret-7f3a"
	s := Secret(canary)
	type holder struct {
		Name   string
		Secret Secret
		Ptr    *Secret
		Map    map[string]Secret
	}
	h := holder{Name: "x", Secret: s, Ptr: &s, Map: map[string]Secret{"k": s}}
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
		outs = append(outs, fmt.Sprintf(verb, s), fmt.Sprintf(verb, h), fmt.Sprintf(verb, &h))
	}
	outs = append(outs, fmt.Sprint(s), fmt.Sprintln(h), s.String())
	js, _ := json.Marshal(h)
	outs = append(outs, string(js))
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	log.Info("msg", "secret", s, "holder", h)
	tlog := slog.New(slog.NewTextHandler(&buf, nil))
	tlog.Info("msg", "secret", s, "holder", h)
	outs = append(outs, buf.String())
	for _, o := range outs {
		if strings.Contains(o, canary) {
			t.Errorf("secret leaked: %s", o)
		}
	}
	if s.Reveal() != canary {
		t.Errorf("Reveal() = %q, want %q", s.Reveal(), canary)
	}
}
