package demo

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestIdPIssuesTokensTheAPIAccepts(t *testing.T) {
	idp, err := NewIdP("app", "s3cret+/", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(idp.Handler("http://issuer"))
	defer srv.Close()
	api := httptest.NewServer(EchoAPI(idp))
	defer api.Close()

	tokenReq := func(user, pass, grant string) (*http.Response, map[string]any) {
		req, _ := http.NewRequest("POST", srv.URL+"/token", strings.NewReader(url.Values{"grant_type": {grant}, "scope": {"x"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(url.QueryEscape(user), url.QueryEscape(pass))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		json.NewDecoder(resp.Body).Decode(&body)
		return resp, body
	}
	if resp, body := tokenReq("app", "wrong", "client_credentials"); resp.StatusCode != 401 || body["error"] != "invalid_client" {
		t.Errorf("wrong secret: %d %v", resp.StatusCode, body)
	}
	if resp, body := tokenReq("app", "s3cret+/", "password"); resp.StatusCode != 400 || body["error"] != "unsupported_grant_type" {
		t.Errorf("password grant: %d %v", resp.StatusCode, body)
	}
	resp, body := tokenReq("app", "s3cret+/", "client_credentials")
	tok, _ := body["access_token"].(string)
	if resp.StatusCode != 200 || tok == "" {
		t.Fatalf("token: %d %v", resp.StatusCode, body)
	}

	call := func(auth string) int {
		req, _ := http.NewRequest("GET", api.URL+"/x", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	parts := strings.Split(tok, ".")
	tampered := parts[0] + "." + parts[1] + "x." + parts[2]
	for name, tc := range map[string]struct {
		auth string
		want int
	}{
		"valid":     {"Bearer " + tok, 200},
		"none":      {"", 401},
		"tampered":  {"Bearer " + tampered, 401},
		"not a jwt": {"Bearer abc", 401},
		"basic":     {"Basic " + tok, 401},
	} {
		if got := call(tc.auth); got != tc.want {
			t.Errorf("%s: %d, want %d", name, got, tc.want)
		}
	}
	if _, err := idp.Verify(tok, time.Now().Add(2*time.Minute)); err == nil {
		t.Error("an expired token verified")
	}
}
