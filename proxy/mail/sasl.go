package mail

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
)

// Mechanism is the SASL mechanism the proxy logs in to the server with.
type Mechanism string

const (
	// XOAUTH2 is Google's and Microsoft's mechanism (the zero value picks it).
	XOAUTH2 Mechanism = "xoauth2"
	// OAUTHBEARER is RFC 7628's.
	OAUTHBEARER Mechanism = "oauthbearer"
)

// saslName is the mechanism's name on the wire.
func (m Mechanism) saslName() string {
	if m == OAUTHBEARER {
		return "OAUTHBEARER"
	}
	return "XOAUTH2"
}

// initialResponse is the base64 client response carrying the token. It is
// a secret: it never reaches a log or an error.
func (m Mechanism) initialResponse(user, token, host, port string) string {
	var b strings.Builder
	if m == OAUTHBEARER {
		// RFC 7628 §3.1: gs2-header "n,a=<saslname>," then kvpairs.
		b.WriteString("n,a=")
		b.WriteString(gs2Escape(user))
		b.WriteString(",\x01host=")
		b.WriteString(host)
		b.WriteString("\x01port=")
		b.WriteString(port)
		b.WriteString("\x01auth=Bearer ")
		b.WriteString(token)
		b.WriteString("\x01\x01")
	} else {
		// https://developers.google.com/gmail/imap/xoauth2-protocol
		b.WriteString("user=")
		b.WriteString(user)
		b.WriteString("\x01auth=Bearer ")
		b.WriteString(token)
		b.WriteString("\x01\x01")
	}
	return base64.StdEncoding.EncodeToString([]byte(b.String()))
}

// errorAnswer is what the client sends back to the server's error
// challenge so that the server can send its final failure: XOAUTH2 wants an
// empty response; RFC 7628 §3.2.3 wants the single byte 0x01.
func (m Mechanism) errorAnswer() string {
	if m == OAUTHBEARER {
		return "AQ==" // base64 of 0x01
	}
	return ""
}

// gs2Escape encodes a SASL name for a GS2 header (RFC 5801 §4).
func gs2Escape(s string) string {
	return strings.NewReplacer("=", "=3D", ",", "=2C").Replace(s)
}

var errBadPlain = errors.New("malformed PLAIN response")

// decodePlain reads a SASL PLAIN response (RFC 4616): base64 of
// authzid NUL authcid NUL passwd. An authorization identity other than the
// login name is refused: the proxy has no notion of acting for another.
func decodePlain(b64 []byte) (user string, pass []byte, err error) {
	raw := make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
	n, err := base64.StdEncoding.Decode(raw, b64)
	if err != nil {
		return "", nil, errBadPlain
	}
	parts := bytes.Split(raw[:n], []byte{0})
	if len(parts) != 3 || len(parts[1]) == 0 {
		return "", nil, errBadPlain
	}
	if len(parts[0]) > 0 && !bytes.Equal(parts[0], parts[1]) {
		return "", nil, errBadPlain
	}
	return string(parts[1]), parts[2], nil
}

// decodeBase64 decodes one line of a SASL exchange.
func decodeBase64(b64 []byte) ([]byte, error) {
	raw := make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
	n, err := base64.StdEncoding.Decode(raw, b64)
	if err != nil {
		return nil, err
	}
	return raw[:n], nil
}
