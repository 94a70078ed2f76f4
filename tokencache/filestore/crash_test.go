package filestore

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// rotateEnv, when set, makes the test binary a process that rotates the
// refresh token in the store it names as fast as it can, for ever: the
// victim of TestKilledWhileRotating.
const rotateEnv = "FILESTORE_TEST_ROTATE"

func init() {
	if path := os.Getenv(rotateEnv); path != "" {
		os.Exit(rotateForever(path))
	}
}

// rotateForever rotates "rt-N" to "rt-N+1" under the key "entry".
func rotateForever(path string) int {
	s, err := Open(path, testKey)
	if err != nil {
		return 1
	}
	ctx := context.Background()
	for {
		if err := increment(ctx, s, "entry"); err != nil {
			return 1
		}
	}
}

// TestKilledWhileRotating kills a process that rotates a refresh token
// in a loop, with SIGKILL at random points, over and over: after each
// kill the store opens with the token of the last write or the one before
// it (a write cut short), never with none, never damaged, and the count
// never goes back.
func TestKilledWhileRotating(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a process hundreds of times")
	}
	kills := 200
	path := filepath.Join(t.TempDir(), "tokens.db")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	last := uint64(0)
	for i := range kills {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), rotateEnv+"="+path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill it at a random point once it is rotating (a race-built
		// child on a loaded machine takes a while to start).
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if s, err := Open(path, testKey); err == nil {
				rec, _ := s.Load(context.Background(), "entry")
				s.Close()
				if rec.Generation > last {
					break
				}
			}
		}
		time.Sleep(time.Duration(rand.IntN(5000)) * time.Microsecond)
		cmd.Process.Kill()
		cmd.Wait()

		s, err := Open(path, testKey)
		if err != nil {
			t.Fatalf("kill %d: the store does not open: %v", i, err)
		}
		rec, err := s.Load(context.Background(), "entry")
		s.Close()
		switch {
		case err != nil && last == 0:
			continue // killed before its first write
		case err != nil:
			t.Fatalf("kill %d: the token is gone (generation %d before): %v", i, last, err)
		case rec.RefreshToken.Reveal() != strconv.FormatUint(rec.Generation, 10):
			t.Fatalf("kill %d: generation %d holds %q", i, rec.Generation, rec.RefreshToken.Reveal())
		case rec.Generation < last:
			t.Fatalf("kill %d: generation went back from %d to %d", i, last, rec.Generation)
		}
		last = rec.Generation
	}
	if last < uint64(kills) {
		t.Errorf("only %d rotations in %d runs: the victim hardly ran", last, kills)
	}
	t.Logf("%d kills, %d rotations survived", kills, last)
}
