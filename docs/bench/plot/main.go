// Command plot draws docs/benchmarks.png from the results of
// ../shared/bench/run.sh: requests per second and CPU per request at 64
// connections (GET), as multiples of goproxy's in the same round, for
// each target. Given several runs (results.jsonl files), a bar is the
// median of the runs' medians and its whisker their range.
//
//	(cd docs/bench/plot && go run .) -o docs/benchmarks.png RUN1/results.jsonl RUN2/results.jsonl ...
//
// It is a module of its own, so that its font does not become a
// dependency of oauthproxy.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"log"
	"os"
	"slices"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

type result struct {
	Tags   map[string]string `json:"tags"`
	RPS    float64           `json:"rps"`
	CPUReq float64           `json:"proc_cpu_us_per_req"`
}

func main() {
	out := flag.String("o", "docs/benchmarks.png", "PNG to write")
	scen := flag.String("scenario", "get-c64", "scenario to plot")
	base := flag.String("base", "goproxy", "the target others are divided by")
	order := flag.String("targets", "nginx-w1,goproxy,goproxy-copy,oauthproxy-nopgo,oauthproxy", "targets, in order (absent ones are skipped)")
	flag.Parse()
	if flag.NArg() == 0 {
		log.Fatal("usage: plot [-o file.png] results.jsonl...")
	}
	// per target: one median ratio per run
	rps, cpu := map[string][]float64{}, map[string][]float64{}
	for _, f := range flag.Args() {
		r, c := ratios(f, *scen, *base)
		for t, v := range r {
			rps[t] = append(rps[t], v)
		}
		for t, v := range c {
			cpu[t] = append(cpu[t], v)
		}
	}
	var targets []string
	for _, t := range strings.Split(*order, ",") {
		if len(rps[t]) > 0 {
			targets = append(targets, t)
		}
	}
	img := draw2(targets, rps, cpu, len(flag.Args()), *scen, *base)
	f, err := os.Create(*out)
	if err != nil {
		log.Fatal(err)
	}
	if err := png.Encode(f, img); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
	for _, t := range targets {
		fmt.Printf("%-18s rps x%s %.2f %v  cpu/req x%s %.2f %v\n", t, *base, median(rps[t]), rnd(rps[t]), *base, median(cpu[t]), rnd(cpu[t]))
	}
}

// ratios reads one run and returns, per target, the median over rounds of
// its rps and CPU per request divided by base's in the same round.
func ratios(path, scen, base string) (rps, cpu map[string]float64) {
	f, err := os.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	byRound := map[string]map[string]result{} // round -> target -> result
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r result
		if json.Unmarshal(sc.Bytes(), &r) != nil || r.Tags["scenario"] != scen || r.Tags["pin"] != "split" {
			continue
		}
		if byRound[r.Tags["round"]] == nil {
			byRound[r.Tags["round"]] = map[string]result{}
		}
		byRound[r.Tags["round"]][r.Tags["target"]] = r
	}
	rs, cs := map[string][]float64{}, map[string][]float64{}
	for _, m := range byRound {
		b, ok := m[base]
		if !ok || b.RPS == 0 || b.CPUReq == 0 {
			continue
		}
		for t, r := range m {
			rs[t] = append(rs[t], r.RPS/b.RPS)
			cs[t] = append(cs[t], r.CPUReq/b.CPUReq)
		}
	}
	rps, cpu = map[string]float64{}, map[string]float64{}
	for t := range rs {
		rps[t], cpu[t] = median(rs[t]), median(cs[t])
	}
	return rps, cpu
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func rnd(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return "[" + strings.Join(s, " ") + "]"
}

var (
	white = color.RGBA{255, 255, 255, 255}
	black = color.RGBA{0, 0, 0, 255}
	grey  = color.RGBA{200, 200, 200, 255}
	blue  = color.RGBA{66, 110, 180, 255}
	amber = color.RGBA{230, 150, 40, 255}
)

// draw2 draws two panels side by side: req/s and CPU per request.
func draw2(targets []string, rps, cpu map[string][]float64, runs int, scen, base string) image.Image {
	const w, h = 1100, 440
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), &image.Uniform{white}, image.Point{}, draw.Src)
	text(img, 20, 22, fmt.Sprintf("%s, median of %d run(s), whiskers: range of the runs; x = multiple of %s in the same round", scen, runs, base), black)
	panel(img, image.Rect(20, 40, w/2-10, h-10), "requests per second (higher is better)", targets, rps, blue)
	panel(img, image.Rect(w/2+10, 40, w-20, h-10), "CPU per request (lower is better)", targets, cpu, amber)
	return img
}

func panel(img *image.RGBA, r image.Rectangle, title string, targets []string, vals map[string][]float64, c color.RGBA) {
	text(img, r.Min.X, r.Min.Y+14, title, black)
	top := 0.0
	for _, t := range targets {
		for _, v := range vals[t] {
			top = max(top, v)
		}
	}
	top = float64(int(top*2)+1) / 2 // next 0.5
	plot := image.Rect(r.Min.X+40, r.Min.Y+30, r.Max.X-10, r.Max.Y-50)
	y := func(v float64) int { return plot.Max.Y - int(v/top*float64(plot.Dy())) }
	for v := 0.0; v <= top+1e-9; v += 0.5 {
		line(img, plot.Min.X, y(v), plot.Max.X, y(v), grey)
		text(img, r.Min.X, y(v)+4, fmt.Sprintf("%.1fx", v), black)
	}
	line(img, plot.Min.X, y(1), plot.Max.X, y(1), black) // the base
	slot := plot.Dx() / max(1, len(targets))
	for i, t := range targets {
		m := median(vals[t])
		x0 := plot.Min.X + i*slot + slot/5
		x1 := plot.Min.X + (i+1)*slot - slot/5
		draw.Draw(img, image.Rect(x0, y(m), x1, plot.Max.Y), &image.Uniform{c}, image.Point{}, draw.Src)
		lo, hi := slices.Min(vals[t]), slices.Max(vals[t])
		xm := (x0 + x1) / 2
		line(img, xm, y(hi), xm, y(lo), black)
		line(img, xm-4, y(hi), xm+4, y(hi), black)
		line(img, xm-4, y(lo), xm+4, y(lo), black)
		label := short(t)
		if len(label) > slot/7 {
			label = label[:slot/7]
		}
		text(img, plot.Min.X+i*slot+(slot-7*len(label))/2, plot.Max.Y+16, label, black)
		v := fmt.Sprintf("%.2fx", m)
		text(img, plot.Min.X+i*slot+(slot-7*len(v))/2, plot.Max.Y+32, v, black)
	}
}

// short names the harness's targets in a bar's width.
func short(t string) string {
	switch t {
	case "nginx-w1":
		return "nginx"
	case "goproxy-copy":
		return "gp copy"
	case "oauthproxy-before":
		return "before"
	case "oauthproxy-nopgo":
		return "no PGO"
	}
	return t
}

func line(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	if x0 == x1 {
		for y := min(y0, y1); y <= max(y0, y1); y++ {
			img.Set(x0, y, c)
		}
		return
	}
	for x := min(x0, x1); x <= max(x0, x1); x++ {
		img.Set(x, y0, c)
	}
}

func text(img *image.RGBA, x, y int, s string, c color.RGBA) {
	d := &font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}
