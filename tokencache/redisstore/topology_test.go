package redisstore

import (
	"errors"
	"fmt"
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
