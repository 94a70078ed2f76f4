package redisstore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// exercise runs every operation through a and b, two Stores on the same
// servers, as replicas would.
func exercise(t *testing.T, a, b *Store) {
	t.Helper()
	ctx := t.Context()
	key := a.EntryKey([]byte("topology"))
	c, stop := subscribed(t, b, key)
	defer stop()
	if _, err := a.CompareAndSwap(ctx, key, 0, fullRecord()); err != nil {
		t.Fatalf("CompareAndSwap: %v", err)
	}
	recv(t, c, "write")
	got, err := b.Load(ctx, key)
	want := fullRecord()
	want.Generation = 1
	if err != nil || diffRecord(got, want) != "" {
		t.Fatalf("Load: %v %s", err, diffRecord(got, want))
	}
	if err := b.Invalidate(ctx, key, "at-1"); err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	recv(t, c, "invalidate")
	release, err := a.Acquire(ctx, key, time.Minute)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if _, err := b.Acquire(ctx, key, time.Minute); !errors.Is(err, tokencache.ErrLeaseHeld) {
		t.Errorf("second Acquire = %v, want ErrLeaseHeld", err)
	}
	if err := release(ctx); err != nil {
		t.Fatalf("release: %v", err)
	}
	if err := a.Delete(ctx, key, 2); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := a.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

func TestSentinel(t *testing.T) {
	master := startRedis(t)
	sentinel := startRedisConf(t,
		fmt.Sprintf("sentinel monitor mymaster 127.0.0.1 %d 1\nsentinel down-after-milliseconds mymaster 60000\n", master.port),
		"--sentinel")
	opts := func(o *Options) {
		o.URL = ""
		o.Sentinel = &Sentinel{Master: "mymaster", Addrs: []string{sentinel.Addr()}}
	}
	exercise(t, newStore(t, master, opts), newStore(t, master, opts))
}

// TestCluster runs on a cluster of one node that serves every slot: the
// scripts and key names must respect slots (CROSSSLOT) all the same.
func TestCluster(t *testing.T) {
	node := startRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	raw := rawClient(t, node)
	ctx := t.Context()
	if err := raw.ClusterAddSlotsRange(ctx, 0, 16383).Err(); err != nil {
		t.Fatal(err)
	}
	// The node needs a moment to call itself ok; only polling tells.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(raw.ClusterInfo(ctx).Val(), "cluster_state:ok") {
		if time.Now().After(deadline) {
			t.Fatal("cluster_state not ok after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	opts := func(o *Options) {
		o.URL = ""
		o.Cluster = []string{node.Addr()}
	}
	exercise(t, newStore(t, node, opts), newStore(t, node, opts))
}

// TestTLS connects with rediss:// to a TLS port, verifying the server's
// certificate for the URL's host against the given roots.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	roots, certFile, keyFile := writeServerCert(t, dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	r := startRedis(t, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certFile,
		"--tls-key-file", keyFile, "--tls-auth-clients", "no")
	url := fmt.Sprintf("rediss://localhost:%d/0", tlsPort)
	for _, tc := range []struct {
		name    string
		tls     *tls.Config
		wantErr bool
	}{
		{"trusted", &tls.Config{RootCAs: roots}, false},
		{"system roots only", &tls.Config{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := func(o *Options) { o.URL, o.TLS = url, tc.tls }
			if tc.wantErr {
				// Reading the system roots the first time can take longer
				// than the 300 ms call timeout under -race on a busy machine.
				err := newStore(t, r, func(o *Options) { opts(o); o.CallTimeout = 5 * time.Second }).Ping(t.Context())
				if err == nil || !strings.Contains(err.Error(), "certificate") {
					t.Errorf("Ping = %v, want a certificate error", err)
				}
				return
			}
			exercise(t, newStore(t, r, opts), newStore(t, r, opts))
		})
	}
}

// writeServerCert writes a self-signed certificate for localhost into dir
// and returns a pool that trusts it.
func writeServerCert(t *testing.T, dir string) (*x509.CertPool, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool, certFile, keyFile
}
