package filestore

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	// Bytes chosen so that the standard and URL alphabets differ (+/ vs -_).
	key := bytes.Repeat([]byte{0xfb, 0xff, 0xbf}, 11)[:KeySize]
	short := key[:16]
	tests := []struct {
		name    string
		in      string
		want    []byte
		wantErr string
	}{
		{name: "standard padded", in: base64.StdEncoding.EncodeToString(key), want: key},
		{name: "standard unpadded", in: base64.RawStdEncoding.EncodeToString(key), want: key},
		{name: "URL padded", in: base64.URLEncoding.EncodeToString(key), want: key},
		{name: "URL unpadded", in: base64.RawURLEncoding.EncodeToString(key), want: key},
		{name: "trailing newline of a key file", in: base64.StdEncoding.EncodeToString(key) + "\n", want: key},
		{name: "empty", in: "", wantErr: "the key is empty"},
		{name: "blank", in: " \n", wantErr: "the key is empty"},
		{name: "16 bytes", in: base64.StdEncoding.EncodeToString(short), wantErr: "the key is 16 bytes once decoded from base64, want 32"},
		{name: "33 bytes", in: base64.StdEncoding.EncodeToString(append(key, 1)), wantErr: "is 33 bytes"},
		{name: "hex of 32 bytes", in: strings.Repeat("ab", 32), wantErr: "is 48 bytes"},
		{name: "not base64", in: "not*base64!secretvalue", wantErr: "is not base64"},
		{name: "mixed alphabets", in: "+-" + base64.RawStdEncoding.EncodeToString(key)[2:], wantErr: "is not base64"},
		{name: "space inside", in: "abcd efgh", wantErr: "is not base64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKey(tc.in)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseKey(%q) = %x, want an error", tc.in, got)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("ParseKey(%q) error %q, want it to contain %q", tc.in, err, tc.wantErr)
				}
				if v := strings.TrimSpace(tc.in); v != "" && strings.Contains(err.Error(), v) {
					t.Errorf("ParseKey(%q) error %q echoes the value", tc.in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKey(%q): %v", tc.in, err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("ParseKey(%q) = %x, want %x", tc.in, got, tc.want)
			}
		})
	}
}
