package main

// Tests of what ships beside the binary: the Dockerfile, the Kubernetes
// manifest and the systemd unit (issue 9, items 5 and 6). No Docker engine
// or cluster runs here, so each file is parsed and held against the binary
// itself: its build command is run, its config is loaded by upstreams.Parse,
// its command lines are parsed by the CLI's own flag sets.

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/oauthproxy/oauthproxy/upstreams"
)

// repoRoot is the module's root, from this package's directory.
const repoRoot = "../.."

// ---- The Dockerfile --------------------------------------------------------

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, ...
	args string
	line int
}

// stage is one FROM and what follows it.
type stage struct {
	from, name string
	insts      []instruction
}

// dockerfile is a parsed Dockerfile: the ARGs before the first FROM and
// the stages.
type dockerfile struct {
	globalArgs map[string]string
	stages     []*stage
}

// parseDockerfile reads the subset of the syntax a conventional Dockerfile
// uses: comments, backslash continuations (with comment lines inside them
// skipped, as Docker does), and one instruction per logical line.
func parseDockerfile(t *testing.T, data []byte) *dockerfile {
	t.Helper()
	df := &dockerfile{globalArgs: map[string]string{}}
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if body, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(body)
			cur.WriteByte(' ')
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		cur.Reset()
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		switch {
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			f = slices.DeleteFunc(f, func(s string) bool { return strings.HasPrefix(s, "--") })
			st := &stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			df.stages = append(df.stages, st)
		case len(df.stages) == 0 && in.cmd == "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			df.globalArgs[k] = v
		case len(df.stages) == 0:
			t.Fatalf("Dockerfile:%d: %s before the first FROM", in.line, in.cmd)
		default:
			st := df.stages[len(df.stages)-1]
			st.insts = append(st.insts, in)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return df
}

// all returns the stage's instructions of one kind.
func (s *stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.insts {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// one returns the stage's only instruction of a kind.
func (s *stage) one(t *testing.T, cmd string) instruction {
	t.Helper()
	all := s.all(cmd)
	if len(all) != 1 {
		t.Fatalf("stage %q has %d %s instructions, want 1", s.name, len(all), cmd)
	}
	return all[0]
}

// execForm parses a JSON-array argument (ENTRYPOINT, CMD): the exec form,
// which needs no shell (the final image has none).
func execForm(t *testing.T, in instruction) []string {
	t.Helper()
	var argv []string
	if err := json.Unmarshal([]byte(in.args), &argv); err != nil {
		t.Fatalf("Dockerfile:%d: %s %s is not the exec form (a JSON array): %v", in.line, in.cmd, in.args, err)
	}
	return argv
}

// expandVars replaces $NAME and ${NAME} as the build's shell would.
func expandVars(t *testing.T, s string, vars map[string]string) string {
	t.Helper()
	re := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)`)
	return re.ReplaceAllStringFunc(s, func(m string) string {
		name := strings.Trim(m, "${}")
		v, ok := vars[name]
		if !ok {
			t.Fatalf("Dockerfile: %s is not an ARG this test knows", m)
		}
		return v
	})
}

// shellWords splits a command line as sh does for quotes and escapes
// (expansion happened before); && and ; come out as their own words.
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var w strings.Builder
	inWord := false
	flush := func() {
		if inWord {
			words = append(words, w.String())
		}
		w.Reset()
		inWord = false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == ' ' || c == '\t':
			flush()
		case c == ';':
			flush()
			words = append(words, ";")
		case c == '&' && i+1 < len(s) && s[i+1] == '&':
			flush()
			words = append(words, "&&")
			i++
		case c == '\'' || c == '"':
			end := strings.IndexByte(s[i+1:], c)
			if end < 0 {
				t.Fatalf("unterminated %c in %q", c, s)
			}
			w.WriteString(s[i+1 : i+1+end])
			inWord = true
			i += end + 1
		case c == '\\' && i+1 < len(s):
			w.WriteByte(s[i+1])
			inWord = true
			i++
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	flush()
	return words
}

// goBuild is the `go build` command of a RUN instruction.
type goBuild struct {
	env  []string // NAME=VALUE before `go`
	args []string // after `go build`
	out  string   // the -o path
	pkg  string
}

// findGoBuild finds the stage's one RUN that runs `go build`, with the
// build's ARGs expanded from vars.
func findGoBuild(t *testing.T, st *stage, vars map[string]string) goBuild {
	t.Helper()
	var found []goBuild
	for _, in := range st.all("RUN") {
		words := shellWords(t, expandVars(t, in.args, vars))
		for len(words) > 0 && strings.HasPrefix(words[0], "--") { // --mount=...
			words = words[1:]
		}
		for cmd := range splitCommands(words) {
			i := 0
			for i < len(cmd) && strings.Contains(cmd[i], "=") && !strings.HasPrefix(cmd[i], "-") {
				i++
			}
			if len(cmd) < i+2 || cmd[i] != "go" || cmd[i+1] != "build" {
				continue
			}
			b := goBuild{env: cmd[:i], args: cmd[i+2:]}
			for j, a := range b.args {
				if a == "-o" && j+1 < len(b.args) {
					b.out = b.args[j+1]
				}
			}
			b.pkg = b.args[len(b.args)-1]
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		t.Fatalf("stage %q has %d `go build` commands, want 1", st.name, len(found))
	}
	return found[0]
}

// splitCommands yields the commands of a word list split at && and ;.
func splitCommands(words []string) func(func([]string) bool) {
	return func(yield func([]string) bool) {
		for len(words) > 0 {
			i := slices.IndexFunc(words, func(w string) bool { return w == "&&" || w == ";" })
			if i < 0 {
				i = len(words)
			}
			if !yield(words[:i]) || i == len(words) {
				return
			}
			words = words[i+1:]
		}
	}
}

func loadDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := parseDockerfile(t, data)
	if len(df.stages) != 2 {
		t.Fatalf("Dockerfile has %d stages, want 2 (build, final)", len(df.stages))
	}
	return df
}

// imageUser is the final stage's numeric USER.
func imageUser(t *testing.T, df *dockerfile) int {
	t.Helper()
	user := df.stages[1].one(t, "USER").args
	uid, err := strconv.Atoi(strings.SplitN(user, ":", 2)[0])
	if err != nil {
		t.Fatalf("USER %s: want a numeric user, which the kubelet can check against runAsNonRoot", user)
	}
	if uid == 0 {
		t.Fatalf("USER %s is root", user)
	}
	return uid
}

// imagePorts are the final stage's EXPOSEd ports.
func imagePorts(t *testing.T, df *dockerfile) []int {
	t.Helper()
	var ports []int
	for _, f := range strings.Fields(df.stages[1].one(t, "EXPOSE").args) {
		p, err := strconv.Atoi(strings.TrimSuffix(f, "/tcp"))
		if err != nil {
			t.Fatalf("EXPOSE %s: %v", f, err)
		}
		ports = append(ports, p)
	}
	slices.Sort(ports)
	return ports
}

// listenPort is the port of a host:port listen address.
func listenPort(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	return n
}

// runConfigArg parses a `run` command line with the run command's own
// flag set and returns its -config.
func runConfigArg(t *testing.T, argv []string) string {
	t.Helper()
	if len(argv) == 0 || argv[0] != "run" {
		t.Fatalf("command line %q: want the run command", argv)
	}
	var stderr bytes.Buffer
	f := newFlags("run", "-config FILE", &stderr, true)
	pos, code := f.parse(argv[1:])
	if code >= 0 || len(pos) > 0 {
		t.Fatalf("oauthproxy %q does not parse (exit %d, arguments %q): %s", argv, code, pos, stderr.String())
	}
	if !filepath.IsAbs(*f.config) {
		t.Fatalf("oauthproxy %q: -config %q is not absolute", argv, *f.config)
	}
	return *f.config
}

func TestDockerfile(t *testing.T) {
	df := loadDockerfile(t)
	build, final := df.stages[0], df.stages[1]

	goVersion := expandVars(t, build.from, df.globalArgs)
	if want := "golang:" + goModVersion(t); goVersion != want {
		t.Errorf("build stage FROM %s, want %s (go.mod's go version)", goVersion, want)
	}
	if want := "gcr.io/distroless/static-debian12:nonroot"; final.from != want {
		t.Errorf("final stage FROM %s, want %s", final.from, want)
	}
	if uid := imageUser(t, df); uid != 65532 {
		t.Errorf("USER %d, want 65532, distroless's nonroot", uid)
	}

	// The ports are the binary's defaults: the proxy and the admin listener.
	want := []int{listenPort(t, upstreams.DefaultListen), listenPort(t, upstreams.DefaultAdminListen)}
	slices.Sort(want)
	if got := imagePorts(t, df); !slices.Equal(got, want) {
		t.Errorf("EXPOSE %v, want %v (upstreams.DefaultListen, DefaultAdminListen)", got, want)
	}

	// ENTRYPOINT is the binary the build stage made, copied into the image.
	entry := execForm(t, final.one(t, "ENTRYPOINT"))
	if len(entry) != 1 {
		t.Fatalf("ENTRYPOINT %q: want the binary alone, arguments in CMD", entry)
	}
	b := findGoBuild(t, build, map[string]string{"TARGETOS": "linux", "TARGETARCH": "amd64", "VERSION": "dev"})
	copies := map[string]string{} // destination -> source, of COPY --from=build
	for _, in := range final.all("COPY") {
		f := strings.Fields(in.args)
		if slices.Contains(f, "--from="+build.name) {
			copies[f[len(f)-1]] = f[len(f)-2]
		}
	}
	if src := copies[entry[0]]; src != b.out {
		t.Errorf("ENTRYPOINT %s is copied from %q, want the build's output %s", entry[0], src, b.out)
	}

	// CMD is a run command line the CLI accepts, whose config directory
	// the image makes (a read-only root cannot make it later).
	cmd := execForm(t, final.one(t, "CMD"))
	config := runConfigArg(t, cmd)
	if _, ok := copies[filepath.Dir(config)]; !ok {
		t.Errorf("CMD -config %s: the image has no %s (want a COPY --from=%s of it)", config, filepath.Dir(config), build.name)
	}
	// Token stores go to /var/lib/oauthproxy, made for the image's user so
	// that a volume mounted there is writable.
	if !slices.ContainsFunc(final.all("COPY"), func(in instruction) bool {
		return strings.Contains(in.args, "--chown=65532:65532") && strings.HasSuffix(in.args, " /var/lib/oauthproxy")
	}) {
		t.Errorf("the image does not make /var/lib/oauthproxy owned by 65532")
	}

	t.Run("HEALTHCHECK", func(t *testing.T) { testHealthcheckInstruction(t, final, entry[0]) })
	t.Run("build", func(t *testing.T) { testDockerBuild(t, df) })
}

// goModVersion is go.mod's go version, major.minor: the image tag.
func goModVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(data)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}

// testHealthcheckInstruction runs the HEALTHCHECK's command line through
// the CLI against a healthy and an unhealthy admin listener, and checks
// that Docker waits for it longer than it waits for /healthz.
func testHealthcheckInstruction(t *testing.T, final *stage, binary string) {
	in := final.one(t, "HEALTHCHECK")
	opts, cmd, ok := strings.Cut(in.args, "CMD ")
	if !ok {
		t.Fatalf("HEALTHCHECK %s: no CMD", in.args)
	}
	argv := execForm(t, instruction{cmd: "HEALTHCHECK CMD", args: cmd, line: in.line})
	if argv[0] != binary || len(argv) < 2 || argv[1] != "healthcheck" {
		t.Fatalf("HEALTHCHECK CMD %q: want %s healthcheck", argv, binary)
	}
	timeout := 30 * time.Second // Docker's default
	for _, o := range strings.Fields(opts) {
		if v, ok := strings.CutPrefix(o, "--timeout="); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("HEALTHCHECK %s: %v", o, err)
			}
			timeout = d
		}
	}
	if timeout <= healthcheckTimeout {
		t.Errorf("HEALTHCHECK --timeout=%s: want more than the command's own %s, so that it reports why", timeout, healthcheckTimeout)
	}
	for _, tc := range []struct {
		status, want int
	}{{200, 0}, {503, 1}} {
		t.Setenv("OAUTHPROXY_ADMIN", healthzServer(t, tc.status))
		var stdout, stderr bytes.Buffer
		if got := runMain(argv[1:], &stdout, &stderr); got != tc.want {
			t.Errorf("HEALTHCHECK %q against a /healthz answering %d exits %d, want %d (%s)", argv, tc.status, got, tc.want, stderr.String())
		}
	}
}

// testDockerBuild runs the Dockerfile's `go build` as the build stage
// would: in a copy of the tree filtered by .dockerignore, with its
// environment and flags, and checks the binary it makes.
func testDockerBuild(t *testing.T, df *dockerfile) {
	if testing.Short() {
		t.Skip("-short: not building the binary")
	}
	const version = "v0.0.0-deploytest"
	b := findGoBuild(t, df.stages[0], map[string]string{"TARGETOS": runtime.GOOS, "TARGETARCH": runtime.GOARCH, "VERSION": version})
	for _, want := range []string{"CGO_ENABLED=0", "GOOS=" + runtime.GOOS, "GOARCH=" + runtime.GOARCH} {
		if !slices.Contains(b.env, want) {
			t.Errorf("go build environment %q lacks %s", b.env, want)
		}
	}
	if !slices.Contains(b.args, "-trimpath") {
		t.Errorf("go build %q lacks -trimpath", b.args)
	}
	if b.pkg != "./cmd/oauthproxy" {
		t.Errorf("go build builds %s, want ./cmd/oauthproxy", b.pkg)
	}

	ctxDir := filepath.Join(t.TempDir(), "src")
	copyContext(t, repoRoot, ctxDir)
	bin := filepath.Join(t.TempDir(), b.out) // /out/oauthproxy under a temp dir
	args := slices.Clone(b.args)
	args[slices.Index(args, "-o")+1] = bin
	cmd := exec.Command("go", append([]string{"build"}, args...)...)
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), b.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %q in the .dockerignore'd context: %v\n%s", args, err, out)
	}

	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatalf("%s version: %v", bin, err)
	}
	if !strings.HasPrefix(string(out), "oauthproxy "+version+" ") {
		t.Errorf("version printed %q, want the stamped %s", out, version)
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	// -ldflags is not recorded with -trimpath (it may hold paths): the
	// version above and the missing tables below show it applied.
	for k, want := range map[string]string{
		"CGO_ENABLED": "0",
		"-trimpath":   "true",
		"GOOS":        runtime.GOOS,
		"GOARCH":      runtime.GOARCH,
	} {
		if settings[k] != want {
			t.Errorf("binary built with %s=%q, want %q", k, settings[k], want)
		}
	}
	if runtime.GOOS != "linux" {
		return // the image's binary is an ELF file; this one is not
	}
	// Static: no program interpreter (dynamic loader) to find in distroless.
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a program interpreter: not a static binary", bin)
		}
	}
	if f.Section(".symtab") != nil {
		t.Errorf("%s has a symbol table: -s did not apply", bin)
	}
	if f.Section(".debug_info") != nil {
		t.Errorf("%s has DWARF: -w did not apply", bin)
	}
}

// ---- .dockerignore ----------------------------------------------------------

// ignoreRule is one .dockerignore line.
type ignoreRule struct {
	re     *regexp.Regexp
	negate bool
}

// parseDockerignore reads .dockerignore with Docker's rules: patterns are
// relative to the context root, `*` and `?` stop at `/`, `**` spans
// directories, `!` re-includes, and the last matching line wins.
func parseDockerignore(t *testing.T, data []byte) []ignoreRule {
	t.Helper()
	var rules []ignoreRule
	for line := range strings.Lines(string(data)) {
		p := strings.TrimSpace(line)
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		r := ignoreRule{}
		if rest, ok := strings.CutPrefix(p, "!"); ok {
			p, r.negate = strings.TrimSpace(rest), true
		}
		p = strings.TrimPrefix(path.Clean("/"+p), "/")
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(p); i++ {
			switch c := p[i]; {
			case strings.HasPrefix(p[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(p[i:], "**"):
				re.WriteString(".*")
				i++
			case c == '*':
				re.WriteString("[^/]*")
			case c == '?':
				re.WriteString("[^/]")
			case c == '\\' && i+1 < len(p):
				re.WriteString(regexp.QuoteMeta(p[i+1 : i+2]))
				i++
			default:
				re.WriteString(regexp.QuoteMeta(string(c)))
			}
		}
		re.WriteString("$")
		r.re = regexp.MustCompile(re.String())
		rules = append(rules, r)
	}
	return rules
}

// ignored reports whether the context leaves rel (slash-separated) out:
// a pattern that matches a directory leaves out everything in it.
func ignored(rules []ignoreRule, rel string) bool {
	out := false
	for _, r := range rules {
		parts := strings.Split(rel, "/")
		for i := range parts {
			if r.re.MatchString(strings.Join(parts[:i+1], "/")) {
				out = !r.negate
				break
			}
		}
	}
	return out
}

func TestDockerignore(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	rules := parseDockerignore(t, data)
	tests := []struct {
		path string
		want bool
	}{
		{".git/config", true},
		{"e2e/node_modules/x/index.js", true},
		{"upstreams/testdata/check/empty.yaml", true},
		{"proxy/proxy_test.go", true},
		{"oauthproxy", true},
		{"docs/kubernetes.md", true},
		{"go.mod", false},
		{"go.sum", false},
		{"cmd/oauthproxy/main.go", false},
		{"cmd/oauthproxy/demo.yaml", false}, // embedded
		{"cmd/oauthproxy/oauthproxy", false},
		{"upstreams/ionapi/ionapi.go", false},
	}
	for _, tc := range tests {
		if got := ignored(rules, tc.path); got != tc.want {
			t.Errorf("ignored(%q) = %v, want %v", tc.path, got, tc.want)
		}
	}
}

// copyContext copies the files of src that .dockerignore keeps to dst: the
// build context Docker would send.
func copyContext(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(src, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	rules := parseDockerignore(t, data)
	negations := slices.ContainsFunc(rules, func(r ignoreRule) bool { return r.negate })
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil || rel == "." {
			return err
		}
		if ignored(rules, filepath.ToSlash(rel)) {
			if d.IsDir() && !negations {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case !d.Type().IsRegular():
			return nil
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		out, err := os.Create(target)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatalf("copying the build context: %v", err)
	}
}

// ---- Kubernetes -------------------------------------------------------------

// The subset of the Kubernetes API the manifest uses, decoded strictly: a
// misspelt field in the manifest fails here rather than being dropped by
// the API server. Field names are the API's (core/v1, apps/v1).
type (
	k8sObject struct {
		APIVersion string            `yaml:"apiVersion"`
		Kind       string            `yaml:"kind"`
		Metadata   k8sMeta           `yaml:"metadata"`
		Data       map[string]string `yaml:"data"`       // ConfigMap
		Type       string            `yaml:"type"`       // Secret
		StringData map[string]string `yaml:"stringData"` // Secret
		Spec       *deploymentSpec   `yaml:"spec"`       // Deployment
	}
	k8sMeta struct {
		Name        string            `yaml:"name"`
		Labels      map[string]string `yaml:"labels"`
		Annotations map[string]string `yaml:"annotations"`
	}
	deploymentSpec struct {
		Replicas int `yaml:"replicas"`
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata k8sMeta `yaml:"metadata"`
			Spec     podSpec `yaml:"spec"`
		} `yaml:"template"`
	}
	podSpec struct {
		TerminationGracePeriodSeconds *int         `yaml:"terminationGracePeriodSeconds"`
		AutomountServiceAccountToken  *bool        `yaml:"automountServiceAccountToken"`
		SecurityContext               podSecurity  `yaml:"securityContext"`
		InitContainers                []*container `yaml:"initContainers"`
		Containers                    []*container `yaml:"containers"`
		Volumes                       []volume     `yaml:"volumes"`
	}
	podSecurity struct {
		RunAsNonRoot   *bool           `yaml:"runAsNonRoot"`
		RunAsUser      *int            `yaml:"runAsUser"`
		RunAsGroup     *int            `yaml:"runAsGroup"`
		FSGroup        *int            `yaml:"fsGroup"`
		SeccompProfile *seccompProfile `yaml:"seccompProfile"`
	}
	seccompProfile struct {
		Type string `yaml:"type"`
	}
	container struct {
		Name          string   `yaml:"name"`
		Image         string   `yaml:"image"`
		RestartPolicy string   `yaml:"restartPolicy"`
		Command       []string `yaml:"command"`
		Args          []string `yaml:"args"`
		Ports         []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
			Protocol      string `yaml:"protocol"`
		} `yaml:"ports"`
		Env []struct {
			Name  string `yaml:"name"`
			Value string `yaml:"value"`
		} `yaml:"env"`
		StartupProbe   *probe `yaml:"startupProbe"`
		LivenessProbe  *probe `yaml:"livenessProbe"`
		ReadinessProbe *probe `yaml:"readinessProbe"`
		Resources      struct {
			Requests map[string]string `yaml:"requests"`
			Limits   map[string]string `yaml:"limits"`
		} `yaml:"resources"`
		SecurityContext *containerSecurity `yaml:"securityContext"`
		VolumeMounts    []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
			ReadOnly  bool   `yaml:"readOnly"`
			SubPath   string `yaml:"subPath"`
		} `yaml:"volumeMounts"`
	}
	probe struct {
		HTTPGet *struct {
			Path string    `yaml:"path"`
			Port yaml.Node `yaml:"port"` // a number or a port name
		} `yaml:"httpGet"`
		InitialDelaySeconds int `yaml:"initialDelaySeconds"`
		PeriodSeconds       int `yaml:"periodSeconds"`
		TimeoutSeconds      int `yaml:"timeoutSeconds"`
		FailureThreshold    int `yaml:"failureThreshold"`
	}
	containerSecurity struct {
		RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		Capabilities             *struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
		SeccompProfile *seccompProfile `yaml:"seccompProfile"`
	}
	volume struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
		Secret *struct {
			SecretName  string `yaml:"secretName"`
			DefaultMode int    `yaml:"defaultMode"`
		} `yaml:"secret"`
		EmptyDir *struct {
			Medium    string `yaml:"medium"`
			SizeLimit string `yaml:"sizeLimit"`
		} `yaml:"emptyDir"`
	}
)

// loadManifest decodes every document of a manifest file.
func loadManifest(t *testing.T, file string) map[string]*k8sObject {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	objs := map[string]*k8sObject{}
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if _, dup := objs[o.Kind]; dup {
			t.Fatalf("%s: two %s objects; this test expects one of each", file, o.Kind)
		}
		objs[o.Kind] = &o
	}
	return objs
}

// memBytes parses a memory quantity (Ki, Mi, Gi, or Go's KiB, MiB, GiB).
func memBytes(t *testing.T, q string) int64 {
	t.Helper()
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"Ki", 10}, {"Mi", 20}, {"Gi", 30}, {"K", 10}, {"M", 20}, {"G", 30}} {
		if n, ok := strings.CutSuffix(q, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				t.Fatalf("memory quantity %q: %v", q, err)
			}
			return v << u.shift
		}
	}
	v, err := strconv.ParseInt(q, 10, 64)
	if err != nil {
		t.Fatalf("memory quantity %q: want a number with Ki, Mi or Gi", q)
	}
	return v
}

// serverDuration is the server setting with YAML key key, read from the
// loaded config when upstreams knows the key, else from the raw YAML: the
// shutdown keys of issue 9 item 2 may land after this file. ok is false
// when neither has it.
func serverDuration(t *testing.T, cfg *upstreams.Config, raw map[string]any, key string) (d time.Duration, known, ok bool) {
	t.Helper()
	v := reflect.ValueOf(cfg.Server)
	durType := reflect.TypeFor[time.Duration]()
	for i := range v.NumField() {
		if strings.Split(v.Type().Field(i).Tag.Get("yaml"), ",")[0] != key {
			continue
		}
		f := v.Field(i)
		if f.Kind() == reflect.Pointer { // nil: unset, the default
			if f.IsNil() {
				return 0, true, true
			}
			f = f.Elem()
		}
		if !f.Type().ConvertibleTo(durType) || f.Kind() != reflect.Int64 {
			t.Fatalf("upstreams.Server's %s is a %s, not a duration", key, f.Type())
		}
		return f.Convert(durType).Interface().(time.Duration), true, true
	}
	s, ok := raw[key].(string)
	if !ok {
		return 0, false, false
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("server.%s: %v", key, err)
	}
	return d, false, true
}

// parseDeployConfig loads a config with upstreams.Parse. Files it names
// are read through files (path -> content). Server keys upstreams does
// not know yet (see serverDuration) are taken out first; the raw server
// mapping is returned for them.
func parseDeployConfig(t *testing.T, name, text string, files map[string]string) (*upstreams.Config, map[string]any) {
	t.Helper()
	var doc struct {
		Server map[string]any `yaml:"server"`
	}
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	known := map[string]bool{}
	st := reflect.TypeFor[upstreams.Server]()
	for i := range st.NumField() {
		known[strings.Split(st.Field(i).Tag.Get("yaml"), ",")[0]] = true
	}
	for _, k := range []string{"shutdown_delay", "shutdown_timeout"} {
		if _, ok := doc.Server[k]; ok && !known[k] {
			t.Logf("%s: upstreams does not know server.%s yet (issue 9 item 2): checked from the YAML only", name, k)
			re := regexp.MustCompile(`(?m)^(\s*)` + k + `:.*$`)
			text = re.ReplaceAllString(text, "${1}# "+k+" (not known to this build)")
		}
	}
	res := upstreams.Resolver{
		Getenv: func(string) (string, bool) { return "", false },
		ReadFile: func(p string) ([]byte, error) {
			if s, ok := files[p]; ok {
				return []byte(s), nil
			}
			return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
		},
	}
	cfg, err := upstreams.Parse(name, []byte(text), res)
	if err != nil {
		t.Fatalf("the config does not load:\n%v", err)
	}
	return cfg, doc.Server
}

func TestKubernetesManifest(t *testing.T) {
	const file = "../../deploy/kubernetes/sidecar.yaml"
	objs := loadManifest(t, file)
	for _, kind := range []string{"ConfigMap", "Secret", "Deployment"} {
		if objs[kind] == nil {
			t.Fatalf("%s has no %s", file, kind)
		}
	}
	cm, secret, deploy := objs["ConfigMap"], objs["Secret"], objs["Deployment"]
	pod := &deploy.Spec.Template.Spec

	// The proxy is a native sidecar: an init container that keeps running.
	var proxy *container
	for _, c := range pod.InitContainers {
		if c.Name == "oauthproxy" {
			proxy = c
		}
	}
	if proxy == nil {
		t.Fatalf("no initContainer named oauthproxy")
	}
	if proxy.RestartPolicy != "Always" {
		t.Errorf("oauthproxy restartPolicy %q, want Always (a native sidecar)", proxy.RestartPolicy)
	}
	if len(proxy.Command) > 0 {
		t.Errorf("oauthproxy command %q: want none, so that the image's ENTRYPOINT runs", proxy.Command)
	}

	mounts := map[string]string{} // mount path -> volume name
	for _, m := range proxy.VolumeMounts {
		mounts[m.MountPath] = m.Name
		if m.SubPath != "" {
			t.Errorf("volumeMount %s uses subPath: the kubelet never updates those, so reload and secret rotation would not see changes", m.MountPath)
		}
	}
	volumes := map[string]volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	mountOf := func(pred func(volume) bool) string {
		for p, name := range mounts {
			if pred(volumes[name]) {
				return p
			}
		}
		return ""
	}

	// args: run -config MOUNT/KEY, the ConfigMap's key at its mount.
	df := loadDockerfile(t)
	config := runConfigArg(t, proxy.Args)
	dfCmd := execForm(t, df.stages[1].one(t, "CMD"))
	if !slices.Equal(proxy.Args, dfCmd) {
		t.Errorf("oauthproxy args %q, want the image's CMD %q", proxy.Args, dfCmd)
	}
	vol := volumes[mounts[filepath.Dir(config)]]
	if vol.ConfigMap == nil || vol.ConfigMap.Name != cm.Metadata.Name {
		t.Fatalf("-config %s: %s is not where ConfigMap %s is mounted", config, filepath.Dir(config), cm.Metadata.Name)
	}
	text, ok := cm.Data[filepath.Base(config)]
	if !ok {
		t.Fatalf("-config %s: ConfigMap %s has no key %s", config, cm.Metadata.Name, filepath.Base(config))
	}

	// The config loads with the Secret's files where they are mounted, and
	// every file it reads is one of them.
	secretDir := mountOf(func(v volume) bool { return v.Secret != nil && v.Secret.SecretName == secret.Metadata.Name })
	if secretDir == "" {
		t.Fatalf("Secret %s is not mounted in the oauthproxy container", secret.Metadata.Name)
	}
	files := map[string]string{}
	for k, v := range secret.StringData {
		files[path.Join(secretDir, k)] = v
	}
	cfg, rawServer := parseDeployConfig(t, file+" ConfigMap "+cm.Metadata.Name, text, files)
	for _, f := range cfg.Files {
		if _, ok := files[f]; !ok {
			t.Errorf("the config reads %s, which is not in the Secret", f)
		}
		delete(files, f)
	}
	for f := range files {
		t.Errorf("Secret key %s (mounted at %s) is not used by the config", path.Base(f), f)
	}
	if cfg.Listen != upstreams.DefaultListen {
		t.Errorf("listen %q, want the image's %q: the app talks to localhost", cfg.Listen, upstreams.DefaultListen)
	}
	adminHost, _, _ := net.SplitHostPort(cfg.AdminListen)
	if ip := net.ParseIP(adminHost); ip == nil || !ip.IsUnspecified() {
		t.Errorf("admin_listen %q: want 0.0.0.0:PORT, so that the kubelet's probes and Prometheus reach it", cfg.AdminListen)
	}
	adminPort := listenPort(t, cfg.AdminListen)
	proxyPort := listenPort(t, cfg.Listen)
	if exposed := imagePorts(t, df); !slices.Contains(exposed, adminPort) || !slices.Contains(exposed, proxyPort) {
		t.Errorf("the image EXPOSEs %v; the config listens on %d and %d", exposed, proxyPort, adminPort)
	}

	// Probes reach the admin listener's /healthz and /readyz.
	ports := map[string]int{}
	for _, p := range proxy.Ports {
		ports[p.Name] = p.ContainerPort
		if p.ContainerPort != adminPort {
			t.Errorf("containerPort %d (%s) is not the admin port %d", p.ContainerPort, p.Name, adminPort)
		}
	}
	for _, tc := range []struct {
		name  string
		probe *probe
		path  string
	}{
		{"startupProbe", proxy.StartupProbe, "/healthz"},
		{"livenessProbe", proxy.LivenessProbe, "/healthz"},
		{"readinessProbe", proxy.ReadinessProbe, "/readyz"},
	} {
		if tc.probe == nil || tc.probe.HTTPGet == nil {
			t.Errorf("oauthproxy has no %s.httpGet", tc.name)
			continue
		}
		g := tc.probe.HTTPGet
		port, err := strconv.Atoi(g.Port.Value)
		if err != nil {
			port = ports[g.Port.Value]
		}
		if g.Path != tc.path || port != adminPort {
			t.Errorf("%s GET :%s%s (port %d), want :%d%s", tc.name, g.Port.Value, g.Path, port, adminPort, tc.path)
		}
	}
	if p := deploy.Spec.Template.Metadata.Annotations["prometheus.io/port"]; p != strconv.Itoa(adminPort) {
		t.Errorf("prometheus.io/port %q, want the admin port %d", p, adminPort)
	}

	// The app reaches the proxy on its listen address and a route's prefix.
	prefixes := map[string]bool{}
	for _, r := range cfg.Routes {
		prefixes[r.Prefix] = true
	}
	for _, c := range pod.Containers {
		for _, e := range c.Env {
			rest, ok := strings.CutPrefix(e.Value, "http://"+cfg.Listen)
			if !strings.HasPrefix(e.Value, "http://127.0.0.1:") && !strings.HasPrefix(e.Value, "http://localhost:") {
				continue
			}
			if !ok || !prefixes[rest] {
				t.Errorf("container %s env %s=%s: not the proxy's listen address %s and a route prefix", c.Name, e.Name, e.Value, cfg.Listen)
			}
		}
	}

	// Security: non-root as the image's user, read-only root, nothing more.
	sc := pod.SecurityContext
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("pod securityContext.runAsNonRoot is not true")
	}
	if uid := imageUser(t, df); sc.RunAsUser == nil || *sc.RunAsUser != uid {
		t.Errorf("pod securityContext.runAsUser %v, want the image's USER %d", sc.RunAsUser, uid)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != "RuntimeDefault" {
		t.Errorf("pod seccompProfile is not RuntimeDefault")
	}
	cs := proxy.SecurityContext
	switch {
	case cs == nil:
		t.Fatalf("oauthproxy has no securityContext")
	case cs.RunAsNonRoot == nil || !*cs.RunAsNonRoot:
		t.Errorf("oauthproxy runAsNonRoot is not true")
	case cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem:
		t.Errorf("oauthproxy readOnlyRootFilesystem is not true")
	case cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation:
		t.Errorf("oauthproxy allowPrivilegeEscalation is not false")
	case cs.Capabilities == nil || !slices.Equal(cs.Capabilities.Drop, []string{"ALL"}):
		t.Errorf("oauthproxy capabilities.drop is not [ALL]")
	case cs.SeccompProfile == nil || cs.SeccompProfile.Type != "RuntimeDefault":
		t.Errorf("oauthproxy seccompProfile is not RuntimeDefault")
	}
	if tmp := volumes[mounts["/tmp"]]; tmp.EmptyDir == nil {
		t.Errorf("/tmp is not an emptyDir: with a read-only root there would be no writable TMPDIR")
	}
	for _, m := range proxy.VolumeMounts {
		if !m.ReadOnly && volumes[m.Name].EmptyDir == nil {
			t.Errorf("volumeMount %s is writable", m.MountPath)
		}
	}

	// Resources: requests above the measured RSS, GOMEMLIMIT below the limit.
	const measuredRSS = 20 << 20 // docs/benchmarks.md, 64 concurrent GETs
	req, lim := proxy.Resources.Requests, proxy.Resources.Limits
	if req["cpu"] == "" || req["memory"] == "" || lim["memory"] == "" {
		t.Fatalf("oauthproxy resources %+v: want cpu and memory requests and a memory limit", proxy.Resources)
	}
	if memBytes(t, req["memory"]) < measuredRSS {
		t.Errorf("memory request %s is below the measured RSS of 20 MiB", req["memory"])
	}
	var gomemlimit string
	for _, e := range proxy.Env {
		if e.Name == "GOMEMLIMIT" {
			gomemlimit = e.Value
		}
	}
	if gomemlimit == "" || memBytes(t, gomemlimit) >= memBytes(t, lim["memory"]) {
		t.Errorf("GOMEMLIMIT %q: want it set below the memory limit %s", gomemlimit, lim["memory"])
	}

	// The pod's grace period covers the proxy's whole shutdown.
	delay, delayKnown, _ := serverDuration(t, cfg, rawServer, "shutdown_delay")
	timeout, timeoutKnown, ok := serverDuration(t, cfg, rawServer, "shutdown_timeout")
	if !ok || timeout == 0 { // unset: the alias shutdown_grace's value or default
		timeout = cfg.Server.ShutdownGrace
	}
	if !delayKnown || !timeoutKnown {
		t.Logf("shutdown_delay %s, shutdown_timeout %s (from the YAML)", delay, timeout)
	}
	if delay == 0 {
		t.Errorf("server.shutdown_delay is not set: in Kubernetes it lets endpoints be removed first")
	}
	grace := 30 * time.Second // Kubernetes' default
	if g := pod.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	if grace < delay+timeout+5*time.Second {
		t.Errorf("terminationGracePeriodSeconds %.0f: want at least shutdown_delay %s + shutdown_timeout %s + 5s", grace.Seconds(), delay, timeout)
	}
}

// ---- systemd ----------------------------------------------------------------

// unitFile is a systemd unit: section -> key -> values, in order.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, data []byte) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		case section == "":
			t.Fatalf("unit line %d: %q before any section", n+1, line)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("unit line %d: %q is not KEY=VALUE", n+1, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// get returns a key's last value (the one systemd uses for single-valued keys).
func (u unitFile) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// credentialsDir is where systemd puts the unit's LoadCredential= files.
const credentialsDir = "/run/credentials/oauthproxy.service"

func TestSystemdUnit(t *testing.T) {
	const file = "../../deploy/systemd/oauthproxy.service"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	u := parseUnit(t, data)

	// ExecStart is a run command line the CLI accepts.
	start := strings.Fields(u.get("Service", "ExecStart"))
	if len(start) == 0 || !filepath.IsAbs(start[0]) {
		t.Fatalf("ExecStart %q: want an absolute binary path", start)
	}
	config := runConfigArg(t, start[1:])
	reload := u["Service"]["ExecReload"]
	if !slices.Contains(reload, "/bin/kill -HUP $MAINPID") {
		t.Errorf("ExecReload %q: want /bin/kill -HUP $MAINPID", reload)
	}
	if check := start[0] + " check -config " + config; !slices.Contains(reload, check) {
		t.Errorf("ExecReload %q: want %q first, so that a broken config fails the reload", reload, check)
	}

	for key, want := range map[string]string{
		"DynamicUser":             "yes",
		"StateDirectory":          "oauthproxy",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"NoNewPrivileges":         "yes",
		"CapabilityBoundingSet":   "",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"SystemCallFilter":        "@system-service",
		"Restart":                 "on-failure",
	} {
		if got, ok := u["Service"][key]; !ok || got[len(got)-1] != want {
			t.Errorf("[Service] %s=%q, want %q", key, got, want)
		}
	}

	// The documented config loads with the unit's credentials in place,
	// and uses each of them.
	creds := map[string]string{} // path -> content
	for _, lc := range u["Service"]["LoadCredential"] {
		id, _, _ := strings.Cut(lc, ":")
		creds[path.Join(credentialsDir, id)] = placeholderCredential(id)
	}
	cfgData, err := os.ReadFile("../../deploy/systemd/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, raw := parseDeployConfig(t, config, string(cfgData), creds)
	for _, f := range cfg.Files {
		if _, ok := creds[f]; !ok {
			t.Errorf("the config reads %s, which is no LoadCredential= of the unit", f)
		}
		delete(creds, f)
	}
	for f := range creds {
		t.Errorf("LoadCredential= %s is not used by the config", path.Base(f))
	}
	for name, o := range cfg.OAuth2 {
		if o.Store != "" && !strings.HasPrefix(o.Store, "/var/lib/oauthproxy/") {
			t.Errorf("oauth2 %s store %s is outside the StateDirectory /var/lib/oauthproxy, which ProtectSystem=strict leaves read-only", name, o.Store)
		}
	}
	if !upstreams.IsLoopbackListen(cfg.Listen) || !upstreams.IsLoopbackListen(cfg.AdminListen) {
		t.Errorf("listen %s, admin_listen %s: on a server, keep both on loopback", cfg.Listen, cfg.AdminListen)
	}

	// Stopping waits longer than the proxy drains.
	delay, _, _ := serverDuration(t, cfg, raw, "shutdown_delay")
	timeout, _, ok := serverDuration(t, cfg, raw, "shutdown_timeout")
	if !ok || timeout == 0 { // unset: the alias shutdown_grace's value or default
		timeout = cfg.Server.ShutdownGrace
	}
	stop, err := time.ParseDuration(u.get("Service", "TimeoutStopSec"))
	if err != nil || stop <= delay+timeout {
		t.Errorf("TimeoutStopSec=%s: want more than shutdown_delay %s + shutdown_timeout %s", u.get("Service", "TimeoutStopSec"), delay, timeout)
	}
	// GOMEMLIMIT below MemoryMax.
	var gomemlimit string
	for _, e := range u["Service"]["Environment"] {
		if v, ok := strings.CutPrefix(e, "GOMEMLIMIT="); ok {
			gomemlimit = v
		}
	}
	if max := u.get("Service", "MemoryMax"); gomemlimit == "" || max == "" || memBytes(t, gomemlimit) >= memBytes(t, max) {
		t.Errorf("GOMEMLIMIT=%q, MemoryMax=%q: want both, GOMEMLIMIT below", gomemlimit, max)
	}

	t.Run("systemd-analyze", func(t *testing.T) { testSystemdAnalyze(t, data) })
}

// placeholderCredential is a credential file's content for the test: an
// .ionapi file must parse.
func placeholderCredential(id string) string {
	if strings.HasSuffix(id, ".ionapi") {
		return `{"ti":"TENANT","ci":"TENANT~client","cs":"secret","pu":"https://mingle-sso.inforcloudsuite.com:443/TENANT/as/",` +
			`"ot":"token.oauth2","oa":"authorization.oauth2","or":"revoke_token.oauth2","saak":"TENANT#key","sask":"secret"}`
	}
	if strings.Contains(id, "key") {
		return "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" // 32 bytes, base64
	}
	return "placeholder"
}

// testSystemdAnalyze has systemd itself check the unit: `verify` for
// unknown keys and bad values, `security` for the exposure score.
func testSystemdAnalyze(t *testing.T, unit []byte) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("OAUTHPROXY_REQUIRE_SERVERS") != "" {
			t.Fatalf("systemd-analyze not found and OAUTHPROXY_REQUIRE_SERVERS is set: install systemd")
		}
		t.Skip("systemd-analyze not found: not verifying the unit with systemd (install systemd to)")
	}
	// verify also checks that the binaries exist: point the unit at this
	// test binary, and keep the file name systemd derives the unit from.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	unitPath := filepath.Join(dir, "oauthproxy.service")
	text := strings.ReplaceAll(string(unit), "/usr/local/bin/oauthproxy", self)
	if err := os.WriteFile(unitPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", "--man=no", unitPath).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify %s (exit: %v):\n%s", unitPath, err, out)
	}
	// Exposure on systemd's scale of 0 (locked down) to 10 (none): 2.0 or
	// less is "OK"; the unit scores 1.6 with systemd 252.
	out, err = exec.Command(analyze, "security", "--offline=true", "--threshold=20", unitPath).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: exposure over 2.0 (%v):\n%s", err, lastLines(out, 3))
	}
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
