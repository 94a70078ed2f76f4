//go:build ignore

// gen writes the key and certificate files the check golden tests name:
// go run gen.go (in this directory). They are test fixtures, no secret.
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"time"
)

func main() {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2125, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	ca, _ := x509.ParseCertificate(caDER)
	write("ca.pem", "CERTIFICATE", caDER)

	leaf := func(name string, key crypto.Signer, notAfter time.Time) {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: notAfter,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
		write(name+".pem", "CERTIFICATE", der)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sec1, _ := x509.MarshalECPrivateKey(ec)
	write("client.key", "EC PRIVATE KEY", sec1)
	leaf("client", ec, time.Date(2125, 1, 1, 0, 0, 0, 0, time.UTC))
	leaf("expired", ec, time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC))

	r, _ := rsa.GenerateKey(rand.Reader, 2048)
	write("rsa.key", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(r))
	//lint:ignore SA1019 a legacy encrypted PEM is what the test needs
	enc, _ := x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(r), []byte("passphrase"), x509.PEMCipherAES256)
	os.WriteFile("encrypted.key", pem.EncodeToMemory(enc), 0o644)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	p8, _ := x509.MarshalPKCS8PrivateKey(ed)
	write("ed25519.key", "PRIVATE KEY", p8)
	os.WriteFile("not-pem.txt", []byte("this is not a certificate\n"), 0o644)
}

func write(name, typ string, der []byte) {
	os.WriteFile(name, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644)
}
