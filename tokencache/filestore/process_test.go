package filestore

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"go.uber.org/goleak"
)

// helperEnv, when set, makes the test binary a second process that
// increments the counter in the store it names (see TestTwoProcesses).
const helperEnv = "FILESTORE_TEST_INCREMENTS"

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(helperProcess(spec))
	}
	goleak.VerifyTestMain(m)
}

// helperProcess parses "N PATH" and increments PATH's counter N times.
func helperProcess(spec string) int {
	var n int
	var path string
	if _, err := fmt.Sscan(spec, &n, &path); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	s, err := Open(path, testKey)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	defer s.Close()
	for range n {
		if err := increment(context.Background(), s, "counter"); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 1
		}
	}
	return 0
}

// TestTwoProcesses runs this test binary again as a second process that
// increments the same counter as this one, at the same time: without the
// flock, two read-modify-writes would interleave and lose increments.
func TestTwoProcesses(t *testing.T) {
	const each = 15
	path := filepath.Join(t.TempDir(), "tokens.db")
	s := open(t, path, testKey)

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var children []*exec.Cmd
	for range 2 {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"="+strconv.Itoa(each)+" "+path)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		children = append(children, cmd)
	}
	for range each {
		if err := increment(context.Background(), s, "counter"); err != nil {
			t.Error(err)
			break
		}
	}
	for _, cmd := range children {
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper process: %v", err)
		}
	}
	const want = 3 * each
	got := load(t, s, "counter")
	if got.Generation != want || got.RefreshToken.Reveal() != strconv.Itoa(want) {
		t.Errorf("counter at generation %d holding %q, want %d", got.Generation, got.RefreshToken.Reveal(), want)
	}
}
