package server

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRemoveStaleSocket(t *testing.T) {
	dir := t.TempDir()

	plain := filepath.Join(dir, "not-a-socket")
	os.WriteFile(plain, []byte("precious"), 0o600)
	if err := removeStaleSocket(plain); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("a regular file: %v", err)
	}
	if _, err := os.Stat(plain); err != nil {
		t.Error("a regular file was removed")
	}

	live := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := removeStaleSocket(live); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("a socket in use: %v", err)
	}

	stale := filepath.Join(dir, "stale.sock")
	l2, _ := net.Listen("unix", stale)
	l2.(*net.UnixListener).SetUnlinkOnClose(false)
	l2.Close()
	if err := removeStaleSocket(stale); err != nil {
		t.Errorf("a stale socket: %v", err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Error("the stale socket is still there")
	}
	if err := removeStaleSocket(filepath.Join(dir, "absent")); err != nil {
		t.Errorf("nothing there: %v", err)
	}
}
