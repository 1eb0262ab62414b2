package webstatus

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"strings"
	"time"

	"mailguard/internal/metrics"
)

//go:embed page.html
var pageHTML string

var page = template.Must(template.New("page").Funcs(template.FuncMap{
	"ts":    func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") },
	"hhmm":  func(t time.Time) string { return t.Local().Format("15:04:05") },
	"num":   func(v float64) string { return fmt.Sprintf("%.0f", v) },
	"ms":    func(v float64) string { return fmt.Sprintf("%.1f ms", v*1000) },
	"join":  strings.Join,
	"deref": func(b *bool) bool { return *b },
	"since": func(now, t time.Time) string { return now.Sub(t).Round(time.Second).String() },
}).Parse(pageHTML))

// chart is a bar chart drawn as SVG on the server: messages per bucket,
// with the refusals of the top reasons stacked inside each bar.
type chart struct {
	Title         string
	Width, Height int
	Bars          []bar
	Legend        []legend
	Max           uint64
	First, Last   string
}

type bar struct {
	X, W  float64
	Whole rect
	Parts []rect
	Title string
}

type rect struct {
	Y, H  float64
	Color string
}

type legend struct {
	Key   string
	Color string
	Total uint64
}

var palette = []string{"#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"}

const otherColor = "#7f7f7f"

func newChart(title string, buckets []metrics.Bucket, width time.Duration) chart {
	c := chart{Title: title, Width: 720, Height: 160}
	if len(buckets) == 0 {
		return c
	}
	keys, totals := metrics.TopReasons(buckets, len(palette))
	color := map[string]string{}
	for i, k := range keys {
		color[k] = palette[i]
		c.Legend = append(c.Legend, legend{k, palette[i], totals[k]})
	}
	for _, b := range buckets {
		var refused uint64
		for _, v := range b.Refusals {
			refused += v
		}
		c.Max = max(c.Max, b.Messages, refused)
	}
	scale := float64(c.Height) / float64(max(c.Max, 1))
	w := float64(c.Width) / float64(len(buckets))
	for i, b := range buckets {
		br := bar{X: float64(i) * w, W: max(w-1, 1)}
		br.Whole = rect{Y: float64(c.Height) - float64(b.Messages)*scale, H: float64(b.Messages) * scale, Color: "#1f77b4"}
		y := float64(c.Height)
		var other uint64
		for k, v := range b.Refusals {
			if color[k] == "" {
				other += v
			}
		}
		parts := append([]string(nil), keys...)
		for _, k := range append(parts, "") {
			n, col := b.Refusals[k], color[k]
			if k == "" {
				n, col = other, otherColor
			}
			if n == 0 {
				continue
			}
			h := float64(n) * scale
			y -= h
			br.Parts = append(br.Parts, rect{Y: y, H: h, Color: col})
		}
		var refused uint64
		for _, v := range b.Refusals {
			refused += v
		}
		br.Title = fmt.Sprintf("%s to %s: %d messages, %d refusals", b.Start.Local().Format("15:04"),
			b.Start.Add(width).Local().Format("15:04"), b.Messages, refused)
		c.Bars = append(c.Bars, br)
	}
	c.First = buckets[0].Start.Local().Format("Jan 2 15:04")
	c.Last = buckets[len(buckets)-1].Start.Add(width).Local().Format("Jan 2 15:04")
	return c
}

type pageData struct {
	*Snapshot
	Hour, Day chart
}

func renderPage(w io.Writer, snap *Snapshot) error {
	return page.Execute(w, pageData{Snapshot: snap,
		Hour: newChart("Messages per minute, last hour", snap.hour, time.Minute),
		Day:  newChart("Messages per 15 minutes, last day", snap.day, 15*time.Minute)})
}
