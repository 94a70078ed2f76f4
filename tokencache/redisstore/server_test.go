package redisstore

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: a hub
// that outlives Close, a pool that is never closed.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// redisServer is a redis-server process of one test, on a free loopback
// port, with no persistence.
type redisServer struct {
	t    *testing.T
	bin  string
	dir  string
	port int
	conf string // a config file to start with, first on the command line
	args []string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

// startRedis starts redis-server with args added to the command line and
// stops it when the test ends. It skips the test when the binary is
// missing, unless OAUTHPROXY_REQUIRE_SERVERS is set (CI sets it).
func startRedis(t *testing.T, args ...string) *redisServer {
	t.Helper()
	return startRedisConf(t, "", args...)
}

// startRedisConf is startRedis with a config file, written into the
// server's directory: Sentinel needs one it can rewrite.
func startRedisConf(t *testing.T, conf string, args ...string) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("OAUTHPROXY_REQUIRE_SERVERS") != "" {
			t.Fatalf("redis-server is required (OAUTHPROXY_REQUIRE_SERVERS is set) but not found: %v", err)
		}
		t.Skip("redis-server not found (apt-get install redis-server); set OAUTHPROXY_REQUIRE_SERVERS to fail instead")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	r := &redisServer{t: t, bin: bin, dir: t.TempDir(), port: port, args: args}
	if conf != "" {
		r.conf = filepath.Join(r.dir, "redis.conf")
		if err := os.WriteFile(r.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r.start()
	t.Cleanup(func() {
		r.kill()
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(r.dir, "redis.log")); err == nil {
				t.Logf("redis-server log:\n%s", b)
			}
		}
	})
	return r
}

func (r *redisServer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

func (r *redisServer) URL() string { return "redis://" + r.Addr() + "/0" }

func (r *redisServer) start() {
	r.t.Helper()
	var args []string
	if r.conf != "" {
		args = append(args, r.conf)
	}
	args = append(args,
		"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--dir", r.dir, "--save", "", "--appendonly", "no",
		"--logfile", filepath.Join(r.dir, "redis.log"))
	args = append(args, r.args...)
	r.cmd = exec.Command(r.bin, args...)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("starting redis-server: %v", err)
	}
	r.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait()
		close(done)
	}(r.cmd, r.done)
	r.waitReady()
}

// waitReady polls until the server answers PING (any answer: with
// requirepass it is -NOAUTH). Polling is the only way to learn that a
// process listens.
func (r *redisServer) waitReady() {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-r.done:
			r.t.Fatalf("redis-server exited at start")
		default:
		}
		if c, err := net.DialTimeout("tcp", r.Addr(), time.Second); err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			c.Write([]byte("PING\r\n"))
			_, err := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server on %s not ready after 10s", r.Addr())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill ends the server with SIGKILL (after SIGCONT, should it be stopped)
// and waits for it.
func (r *redisServer) kill() {
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Signal(syscall.SIGCONT)
	r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
}

// restart kills the server and starts a new one on the same port, empty.
func (r *redisServer) restart() {
	r.t.Helper()
	r.kill()
	r.start()
}

func (r *redisServer) signal(sig syscall.Signal) {
	r.t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		r.t.Fatalf("signal %v to redis-server: %v", sig, err)
	}
}
