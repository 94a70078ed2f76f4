package upstreams

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// Load reads, checks and completes the config file at path. Its error is
// Problems, every problem in the file at once, or the error reading it.
func Load(path string) (*Config, error) {
	data, err := readLimited(path, maxConfigBytes)
	if err != nil {
		return nil, err
	}
	cfg, err := Parse(path, data, Resolver{})
	if cfg != nil {
		cfg.Files = append([]string{path}, cfg.Files...)
	}
	return cfg, err
}

// Parse is Load for a config already read; file names it in problems.
func Parse(file string, data []byte, res Resolver) (*Config, error) {
	if res.Dir == "" {
		res.Dir = filepath.Dir(file)
	}
	d := &decoder{file: file, res: &resolver{Resolver: res}}
	root, err := d.parse(data)
	if err != nil {
		return nil, err
	}
	cfg := &Config{File: file}
	if root != nil {
		d.value(root, reflect.ValueOf(cfg).Elem(), "")
	}
	cfg.res = d.res
	if d.over {
		// Decoding stopped half-way: what is there is no config to check.
		return nil, d.problems.sorted()
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.OAuth2)) {
		if o := cfg.OAuth2[name]; o != nil {
			d.ionapi(name, o)
		}
	}
	cfg.applyDefaults()
	(&validator{decoder: d, cfg: cfg}).run()
	if len(d.problems) > 0 {
		return nil, d.problems.sorted()
	}
	cfg.Warnings = d.warnings.sorted()
	cfg.Files = d.res.read()
	// Positions served the problems; a large route table need not keep
	// one map per route for as long as it serves.
	for _, r := range cfg.Routes {
		r.Pos = nil
	}
	return cfg, nil
}

// maxExpanded bounds how many values aliases and merge keys may add to a
// file (a "billion laughs" file would otherwise take forever). Values
// written out count against nothing but maxConfigBytes, so a route table
// of any size loads.
const maxExpanded = 100_000

// maxConfigBytes bounds a config file's size.
const maxConfigBytes = 32 << 20

type decoder struct {
	file     string
	res      *resolver
	problems Problems
	warnings Problems
	// expanding is how deep the decoder is inside an alias or merge;
	// expanded counts the values decoded there.
	expanding int
	expanded  int
	over      bool            // maxExpanded was passed: decoding stopped
	failed    map[[2]int]bool // line, col of every problem
	noMissing map[string]bool // entries whose missing keys are another problem's
}

func (d *decoder) add(n *yaml.Node, path, format string, args ...any) {
	d.addAt(Pos{Line: n.Line, Col: n.Column}, path, format, args...)
}

// addAt records a problem at p; path says which key, as a.b[2].c.
func (d *decoder) addAt(p Pos, path, format string, args ...any) {
	pr := d.problem(p, path, format, args...)
	d.problems = append(d.problems, pr)
	if d.failed == nil {
		d.failed = map[[2]int]bool{}
	}
	d.failed[[2]int{pr.Line, pr.Col}] = true
}

// warnAt records something allowed but worth saying at every start.
func (d *decoder) warnAt(p Pos, path, format string, args ...any) {
	d.warnings = append(d.warnings, d.problem(p, path, format, args...))
}

func (d *decoder) problem(p Pos, path, format string, args ...any) Problem {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	if p.Line == 0 {
		p.Line, p.Col = 1, 1
	}
	return Problem{File: d.file, Line: p.Line, Col: p.Col, Msg: msg}
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parse reads the single YAML document of data.
func (d *decoder) parse(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // empty: every required key is missing, validation says so
		}
		return nil, Problems{d.syntax(err, data)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, Problems{{File: d.file, Line: extra.Line, Col: extra.Column, Msg: "a second YAML document: the config is one document"}}
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], nil
}

func (d *decoder) syntax(err error, data []byte) Problem {
	p := Problem{File: d.file, Line: 1, Col: 1, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		p.Line, _ = strconv.Atoi(m[1])
		p.Msg = m[2]
	}
	lines := bytes.Split(data, []byte("\n"))
	if p.Line >= 1 && p.Line <= len(lines) {
		if i := bytes.IndexByte(lines[p.Line-1], '\t'); i >= 0 && strings.Contains(p.Msg, "cannot start any token") {
			p.Col = i + 1
			p.Msg += " (a tab: YAML is indented with spaces)"
		}
	}
	p.Msg = "invalid YAML: " + p.Msg
	return p
}

var (
	durationType      = reflect.TypeFor[time.Duration]()
	sizeType          = reflect.TypeFor[Size]()
	secretType        = reflect.TypeFor[Secret]()
	positionsType     = reflect.TypeFor[Positions]()
	textUnmarshalType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// value decodes n into v. It returns where n stands, and its raw text.
func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) Pos {
	if n.Kind == yaml.AliasNode {
		d.expanding++
		defer func() { d.expanding-- }()
	}
	if d.over || d.expanding > 0 && !d.count(n, path, 1) {
		return Pos{}
	}
	n = deref(n)
	pos := Pos{Line: n.Line, Col: n.Column, raw: n.Value}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return pos // absent: the zero value, which the defaults fill
	}
	t := v.Type()
	switch {
	case t == durationType:
		if s, ok := d.scalar(n, path, "a duration like 30s"); ok {
			dur, err := time.ParseDuration(s)
			switch {
			case err != nil && isDigits(s):
				d.add(n, path, "%q has no unit: write %ss or %sms", s, s, s)
			case err != nil:
				d.add(n, path, "%q is not a duration (like 30s, 5m, 1h30m)", s)
			case dur < 0:
				d.add(n, path, "%q is negative", s)
			default:
				v.SetInt(int64(dur))
			}
		}
		return pos
	case t == secretType:
		if s, ok := d.scalar(n, path, "a string"); ok {
			v.Set(reflect.ValueOf(Secret{Secret: tokencache.Secret(s), ref: n.Value}))
		}
		return pos
	case reflect.PointerTo(t).Implements(textUnmarshalType):
		if s, ok := d.scalar(n, path, "a string"); ok {
			if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
				d.add(n, path, "%v", err)
			}
		}
		return pos
	case t == sizeType:
		if s, ok := d.scalar(n, path, "a size like 1MiB"); ok {
			size, err := parseSize(s)
			if err != nil {
				d.add(n, path, "%v", err)
			} else {
				v.SetInt(size)
			}
		}
		return pos
	}
	switch t.Kind() {
	case reflect.Pointer:
		nv := reflect.New(t.Elem())
		d.value(n, nv.Elem(), path)
		v.Set(nv)
	case reflect.Struct:
		d.structure(n, v, path)
	case reflect.String:
		if s, ok := d.scalar(n, path, "a string"); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		if s, ok := d.scalar(n, path, "true or false"); ok {
			switch s {
			case "true":
				v.SetBool(true)
			case "false":
				v.SetBool(false)
			default:
				d.add(n, path, "want true or false, got %q", s)
			}
		}
	case reflect.Int, reflect.Int64:
		if s, ok := d.scalar(n, path, "a whole number"); ok {
			i, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				d.add(n, path, "want a whole number, got %q", s)
			} else {
				v.SetInt(i)
			}
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.add(n, path, "want a list, got %s", describe(n))
			return pos
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, e := range n.Content {
			ep := fmt.Sprintf("%s[%d]", path, i)
			if isNull(e) && t.Elem().Kind() == reflect.Pointer {
				d.add(deref(e), ep, "empty entry")
				continue
			}
			d.value(e, s.Index(i), ep)
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.add(n, path, "want a mapping, got %s", describe(n))
			return pos
		}
		m := reflect.MakeMap(t)
		for _, kv := range d.pairs(n, path) {
			if isNull(kv.val) && t.Elem().Kind() == reflect.Pointer {
				d.add(kv.key, join(path, kv.key.Value), "empty entry")
				continue
			}
			ev := reflect.New(t.Elem()).Elem()
			d.pairValue(kv, ev, join(path, kv.key.Value))
			m.SetMapIndex(reflect.ValueOf(kv.key.Value).Convert(t.Key()), ev)
		}
		v.Set(m)
	default:
		panic(fmt.Sprintf("upstreams: no YAML decoding for %s", t))
	}
	return pos
}

// structure decodes a mapping into the struct v by its yaml tags, and
// records where each key's value stands in v's Pos field.
func (d *decoder) structure(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.add(n, path, "want a mapping of keys, got %s", describe(n))
		return
	}
	fields := fieldsOf(v.Type())
	pos := Positions{"": {Line: n.Line, Col: n.Column}}
	for _, kv := range d.pairs(n, path) {
		key := kv.key.Value
		i, ok := fields.index[key]
		if !ok {
			if s := suggest(key, fields.names); s != "" {
				d.add(kv.key, path, "unknown key %q (did you mean %q?)", key, s)
			} else {
				d.add(kv.key, path, "unknown key %q (known keys: %s)", key, strings.Join(fields.names, ", "))
			}
			continue
		}
		pos[key] = d.pairValue(kv, v.Field(i), join(path, key))
	}
	if f := v.FieldByName("Pos"); f.IsValid() && f.Type() == positionsType {
		f.Set(reflect.ValueOf(pos))
	}
}

type pair struct {
	key, val *yaml.Node
	merged   bool // from a merge key: its value counts as expanded
}

// pairValue decodes a mapping entry's value.
func (d *decoder) pairValue(kv pair, v reflect.Value, path string) Pos {
	if kv.merged {
		d.expanding++
		defer func() { d.expanding-- }()
	}
	return d.value(kv.val, v, path)
}

// count adds k values decoded inside an alias or merge, and reports
// whether the file is still within maxExpanded. Passing it is a problem at
// n and stops decoding: a config that loads is never missing values.
func (d *decoder) count(n *yaml.Node, path string, k int) bool {
	if d.expanded += k; d.expanded <= maxExpanded {
		return true
	}
	if !d.over {
		d.over = true
		d.add(n, path, "aliases and merge keys expand the file to more than %d values: write repeated values out instead", maxExpanded)
	}
	return false
}

// pairs lists a mapping's entries: merged ones (<<: *anchor) first unless
// the mapping sets the key itself. A key set twice is a problem.
func (d *decoder) pairs(n *yaml.Node, path string) []pair {
	var own, merged []pair
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.add(k, path, "a key must be a plain string, got %s", describe(k))
			continue
		}
		if k.Tag == "!!merge" || (k.Value == "<<" && k.Style == 0) {
			merged = append(merged, d.mergeSources(deref(val), path)...)
			continue
		}
		if prev, dup := seen[k.Value]; dup {
			d.add(k, path, "key %q is set twice (first on line %d)", k.Value, prev.Line)
			continue
		}
		seen[k.Value] = k
		own = append(own, pair{key: k, val: val})
	}
	out := make([]pair, 0, len(own)+len(merged))
	for _, p := range merged {
		if _, overridden := seen[p.key.Value]; !overridden {
			seen[p.key.Value] = p.key
			out = append(out, p)
		}
	}
	return append(out, own...)
}

func (d *decoder) mergeSources(v *yaml.Node, path string) []pair {
	var srcs []*yaml.Node
	switch v.Kind {
	case yaml.MappingNode:
		srcs = []*yaml.Node{v}
	case yaml.SequenceNode:
		for _, e := range v.Content {
			srcs = append(srcs, deref(e))
		}
	}
	var out []pair
	for _, m := range srcs {
		if m.Kind != yaml.MappingNode {
			d.add(m, path, "<< merges a mapping, got %s", describe(m))
			continue
		}
		if !d.count(m, path, len(m.Content)/2) {
			return nil
		}
		for _, p := range d.pairs(m, path) {
			p.merged = true
			out = append(out, p)
		}
	}
	return out
}

// scalar returns n's text with ${...} references resolved.
func (d *decoder) scalar(n *yaml.Node, path, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.add(n, path, "want %s, got %s", want, describe(n))
		return "", false
	}
	s, err := d.res.expand(n.Value)
	if err != nil {
		d.add(n, path, "%v", err)
		return "", false
	}
	return s, true
}

func isNull(n *yaml.Node) bool {
	n = deref(n)
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!int", "!!float":
			return "the number " + n.Value
		case "!!bool":
			return n.Value
		case "!!null":
			return "nothing"
		}
		return strconv.Quote(n.Value)
	}
	return "an alias"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

type structFields struct {
	index map[string]int
	names []string
}

var fieldCache sync.Map // reflect.Type -> *structFields

func fieldsOf(t reflect.Type) *structFields {
	if f, ok := fieldCache.Load(t); ok {
		return f.(*structFields)
	}
	f := &structFields{index: map[string]int{}}
	for i := range t.NumField() {
		tag := t.Field(i).Tag.Get("yaml")
		if tag == "" || tag == "-" || !t.Field(i).IsExported() {
			continue
		}
		f.index[tag] = i
		f.names = append(f.names, tag)
	}
	slices.Sort(f.names)
	fieldCache.Store(t, f)
	return f
}

// parseSize reads 512, 512B, 64KiB, 1MiB or 2GiB.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if v, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(v), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		for _, dec := range []string{"KB", "MB", "GB", "K", "M", "G", "kb", "mb"} {
			if strings.HasSuffix(s, dec) {
				return 0, fmt.Errorf("%q: sizes are written in KiB, MiB or GiB", s)
			}
		}
		return 0, fmt.Errorf("%q is not a size (like 512, 64KiB, 1MiB)", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}
