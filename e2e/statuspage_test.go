package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The status page, loaded in a real headless Chromium while mail flows
// through a real Postfix: it shows the messages and the refusal by its
// signature, draws its charts, lists the latest decisions with a hostile
// sender as text (no script runs), and shows clamd-free health. The test
// saves a screenshot (to $MAILGUARD_SCREENSHOT when set, for the README).
func TestStatusPageInChromium(t *testing.T) {
	requireCommands(t, map[string]string{"chromium": "chromium"})
	httpPort := freePort(t)
	d := startMailguard(t, fmt.Sprintf(`listen = "LISTEN"
filters = ["virus"]
[virus]
signatures = "signatures"
[http]
listen = "127.0.0.1:%d"
`, httpPort), map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"})
	p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", d.port), "user@example.edu")
	base := fmt.Sprintf("http://127.0.0.1:%d/", httpPort)
	waitForPort(t, httpPort, "mailguard http", d.logs.String)

	dir := t.TempDir()
	clean, worm := filepath.Join(dir, "clean"), filepath.Join(dir, "worm")
	write(t, clean, message("clean", 50, -1, ""))
	write(t, worm, message("worm", 50, 25, ""))
	const hostile = `"<script>window.pwned=1</script>"@x.example`

	// Traffic flows while the browser looks: a worm in every third message.
	var sent, refused atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			file, from := clean, "sender@example.org"
			if i%3 == 2 {
				file = worm
			}
			if i%6 == 5 {
				from = hostile
			}
			res := smtpSend(t, p.port, from, 0, readFile(t, file), "user@example.edu")
			sent.Add(1)
			if len(res.Data) > 0 && code(res.Data) == 550 {
				refused.Add(1)
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	for deadline := time.Now().Add(60 * time.Second); refused.Load() < 2; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no traffic: %d sent, %d refused", sent.Load(), refused.Load())
		}
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath("chromium"), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1100, 900))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(base), chromedp.WaitVisible(chromedp.CSS("#recent"))); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	title := run1(t, ctx, chromedp.Title())
	messages := run1(t, ctx, chromedp.Text(chromedp.CSS("#messages")))
	refusals := run1(t, ctx, chromedp.Text(chromedp.CSS("#refusals-hour")))
	recent := run1(t, ctx, chromedp.Text(chromedp.CSS("#recent")))
	// Bars drawn in the hour's chart: the current minute's messages and
	// its refusals, at least.
	bars := run1(t, ctx, chromedp.Evaluate[int](`Array.from(document.querySelectorAll("svg")[0].querySelectorAll("rect")).filter(r => r.getBBox().height > 0).length`))
	scripts := run1(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll("script").length`))
	pwned := run1(t, ctx, chromedp.Evaluate[bool](`window.pwned === 1`))
	shot := run1(t, ctx, chromedp.FullScreenshot(100))
	shotFile := filepath.Join(t.TempDir(), "status-page.png")
	if dst := os.Getenv("MAILGUARD_SCREENSHOT"); dst != "" {
		shotFile = dst
	}
	if err := os.WriteFile(shotFile, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", shotFile, len(shot))

	if title != "mailguard status" {
		t.Errorf("title %q", title)
	}
	var n int
	if _, err := fmt.Sscan(messages, &n); err != nil || n < 3 {
		t.Errorf("messages shown %q, want at least 3 (%d sent)", messages, sent.Load())
	}
	if !strings.Contains(refusals, "virus:WORM_SOBIG.B") {
		t.Errorf("refusals of the last hour do not name the signature:\n%s", refusals)
	}
	if bars < 2 {
		t.Errorf("%d bars drawn in the hour's chart, want the messages and the refusals of this minute", bars)
	}
	if strings.Contains(run1(t, ctx, chromedp.Text(chromedp.CSS("#capture"))), "switched") {
		t.Errorf("the page reports a capture switch, but capture is not configured")
	}
	if !strings.Contains(recent, "reject 550 5.7.0 VIRUS FOUND") || !strings.Contains(recent, "127.0.0.1") {
		t.Errorf("recent decisions:\n%s", recent)
	}
	if scripts != 0 || pwned {
		t.Errorf("the hostile sender ran as a script (%d script elements, pwned %v)", scripts, pwned)
	}
	// The hostile sender, once it has been sent, is shown as text.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		if err := chromedp.Do(ctx, chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#recent"))); err != nil {
			t.Fatal(err)
		}
		text := run1(t, ctx, chromedp.Text(chromedp.CSS("#recent")))
		scripts = run1(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll("script").length`))
		if strings.Contains(text, `<script>window.pwned=1</script>`) {
			if scripts != 0 {
				t.Errorf("%d script elements after the hostile sender", scripts)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hostile sender never showed as text:\n%s", text)
		}
	}
	resp, err := http.Get(base + "metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `mailguard_hits_total{filter="virus",reason="WORM_SOBIG.B"}`) {
		t.Errorf("/metrics lacks the signature's hits")
	}
}

// run1 runs one browser action and returns its value.
func run1[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return v
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Error(err)
	}
	return string(b)
}
