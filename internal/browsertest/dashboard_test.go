package browsertest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"go.uber.org/goleak"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// xssPayload is what the failing handler answers and logs: if the page
// ever rendered data as HTML, it would set window.__xss.
const xssPayload = `<script>window.__xss=1</script><img src=x onerror="window.__xss=1"> bad input`

// app is a quickstart-like service: a real queue in a temporary
// directory, a scheduler, a slow target that honours its context, a
// target that fails its first try, the task API and the dashboard.
type app struct {
	base string
	q    *queue.Queue
}

func startApp(t *testing.T) *app {
	t.Helper()
	discard := slog.New(slog.DiscardHandler)
	q := testutil.OpenQueue(t, &queue.Options{Logger: discard}) // checked and closed last
	sched, err := invoke.New(q, &invoke.Options{
		Logger:          discard,
		ReportInterval:  100 * time.Millisecond,
		ShutdownTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	tr := trigger.New(sched, &trigger.Options{TaskPath: "/tasks/"})

	mux := http.NewServeMux()
	mux.Handle("POST /slow", tr.Async("slow", http.HandlerFunc(slow), &invoke.Policy{Concurrency: 4}))
	delivered := destination.Func(func(context.Context, destination.Record) error { return nil })
	mux.Handle("POST /fail", tr.Async("fail", failFirstTry(), &invoke.Policy{
		MaxRetries: invoke.NoRetries,
		OnSuccess:  delivered,
		OnFailure:  delivered,
	}))
	mux.Handle("/tasks/", http.StripPrefix("/tasks", trigger.TaskAPI(q, nil)))
	mux.Handle("/dashboard/", http.StripPrefix("/dashboard", trigger.Dashboard("/tasks/", &trigger.DashboardOptions{
		TestPath: "/slow?ms=60000",
	})))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	runDone := make(chan error, 1)
	go func() { runDone <- sched.Run(context.Background()) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("http shutdown: %v", err)
		}
		if err := <-srvDone; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
		if err := sched.Stop(ctx); err != nil {
			t.Errorf("scheduler stop: %v", err)
		}
		if err := <-runDone; err != nil {
			t.Errorf("scheduler run: %v", err)
		}
	})
	return &app{base: "http://" + ln.Addr().String(), q: q}
}

// slow works for ?ms= milliseconds (default a minute), reporting progress
// and logging, and gives up as soon as its context is cancelled.
func slow(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
	if err != nil {
		ms = 60000
	}
	total := time.Duration(ms) * time.Millisecond
	log := task.Logger(ctx)
	log.Info("starting", "ms", ms)
	done := time.NewTimer(total)
	defer done.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	for {
		select {
		case <-done.C:
			log.Info("finished")
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"done": true, "ms": ms})
			return
		case <-tick.C:
			el := time.Since(start)
			task.SetProgress(ctx, 100*float64(el)/float64(total), fmt.Sprintf("%d of %d ms", el.Milliseconds(), ms))
		case <-ctx.Done():
			log.Warn("giving up", "cause", context.Cause(ctx))
			http.Error(w, context.Cause(ctx).Error(), http.StatusServiceUnavailable)
			return
		}
	}
}

// failFirstTry answers 400 (a failure that is not retried) to the first
// attempt of each task, with HTML in its body and its log, and succeeds
// afterwards: a retried task succeeds.
func failFirstTry() http.Handler {
	var seen sync.Map
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, _ := task.FromContext(r.Context())
		if _, again := seen.LoadOrStore(a.ID, true); !again {
			task.Logger(r.Context()).Error("rejecting the first try", "html", `<img src=x onerror="window.__xss=1">`)
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, xssPayload)
			return
		}
		task.Logger(r.Context()).Info("accepted on a later try", "attempt", a.Number)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
}

// browser is one headless Chromium tab, and where its screenshots go.
type browser struct {
	t     *testing.T
	ctx   context.Context
	shots string
	n     int

	mu      sync.Mutex
	console []chromedp.ConsoleMessage
}

// chromiumPath finds the browser: $CHROMIUM, /usr/bin/chromium, or
// chromium on the PATH.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("Chromium not found (install it: apt-get install -y chromium, or set CHROMIUM): %v", err)
	}
	return p
}

func startBrowser(t *testing.T) *browser {
	t.Helper()
	shots := os.Getenv("OFFLOAD_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	actx, acancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		// Without these Chromium reaches out to the network, and on a
		// closed machine its connections are refused.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1000),
		chromedp.CombinedOutput(&out),
	)
	ctx, cancel := chromedp.NewContext(actx)
	b := &browser{t: t, ctx: ctx, shots: shots}
	var listening sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		acancel()
		listening.Wait()
	})
	// The first Run starts the browser; it must have no timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("Chromium cannot start: %v\nits output:\n%s", err, out.String())
	}
	messages := chromedp.Console(ctx)
	listening.Go(func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.console = append(b.console, m)
			b.mu.Unlock()
		}
	})
	t.Logf("screenshots in %s", shots)
	return b
}

// fail reports a failed step with a screenshot and what the page said.
func (b *browser) fail(what string, err error) {
	b.t.Helper()
	b.shot("failure")
	status, _ := b.tryString(`document.getElementById("status").textContent`)
	b.t.Fatalf("%s: %v\npage status: %q\nconsole:\n%s", what, err, status, b.consoleText())
}

func (b *browser) consoleText() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var s strings.Builder
	for _, m := range b.console {
		fmt.Fprintf(&s, "  %s\n", m)
	}
	return s.String()
}

// do runs steps, each call bounded by 30 s.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.fail(what, err)
	}
}

// waitFor waits until the JavaScript expression is truthy, and returns its
// value as a string.
func (b *browser) waitFor(what, expr string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Poll[any](expr,
		chromedp.WithPollingTimeout(20*time.Second), chromedp.WithPollingInterval(50*time.Millisecond)))
	if err != nil {
		b.fail("waiting for "+what, err)
	}
	return fmt.Sprint(v)
}

func (b *browser) tryString(expr string) (string, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[string](expr))
}

func (b *browser) eval(expr string) string {
	b.t.Helper()
	s, err := b.tryString(expr)
	if err != nil {
		b.fail("evaluating "+expr, err)
	}
	return s
}

// shot saves a full-page PNG screenshot, numbered in order.
func (b *browser) shot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	b.n++
	path := filepath.Join(b.shots, fmt.Sprintf("%02d-%s.png", b.n, name))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	b.t.Logf("screenshot %s", path)
}

// send fills the test form and returns the ID that the 202 carried.
func (b *browser) send(path, body string) string {
	b.t.Helper()
	prev := b.eval(`(document.getElementById("send-task-link") || {}).textContent || ""`)
	b.do("sending "+path+" through the test form",
		chromedp.SetValue(chromedp.ID("send-method"), "POST"),
		chromedp.SetValue(chromedp.ID("send-path"), path),
		chromedp.SetValue(chromedp.ID("send-body"), body),
		chromedp.Click(chromedp.ID("send-submit")),
	)
	id := b.waitFor("the 202 of "+path, fmt.Sprintf(
		`(() => { const a = document.getElementById("send-task-link"); return a && a.textContent !== %q && a.textContent; })()`, prev))
	if err := task.CheckID(id); err != nil {
		b.t.Fatalf("the form shows task id %q: %v", id, err)
	}
	return id
}

// rowStatus is a JavaScript expression: the status shown in the list for
// task id, or "" if the task is not listed.
func rowStatus(id string) string {
	return fmt.Sprintf(`((document.querySelector('#tasks-body tr[data-id=%q]') || {dataset: {}}).dataset.status || "")`, id)
}

func (b *browser) filterStatus(status string) {
	b.t.Helper()
	b.do("filtering by status "+status,
		chromedp.SetValue(chromedp.ID("f-status"), status),
		chromedp.Click(chromedp.CSS(`#filters button[type="submit"]`)),
	)
	b.waitFor("the list to show only "+status+" tasks", fmt.Sprintf(`location.hash.includes("status=%s") &&
		document.querySelectorAll("#tasks-body tr").length > 0 &&
		[...document.querySelectorAll("#tasks-body tr")].every(tr => tr.dataset.status === %q)`, status, status))
}

func (b *browser) open(id string) {
	b.t.Helper()
	b.do("opening task "+id, chromedp.Click(chromedp.CSS(fmt.Sprintf(`#tasks-body tr[data-id=%q] a`, id))))
	b.waitFor("the detail view of "+id, fmt.Sprintf(
		`!document.getElementById("detail-view").hidden && document.getElementById("d-id").textContent === %q &&
		document.getElementById("d-events").children.length > 0`, id))
}

func query(t *testing.T, q *queue.Queue, id string) *task.Task {
	t.Helper()
	tk, err := task.Query(context.Background(), q, id)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// TestDashboard drives the dashboard as an operator would: sends async
// requests through its test form, watches them appear, filters by status,
// opens a running task and stops it, and retries a failed one.
func TestDashboard(t *testing.T) {
	a := startApp(t)
	b := startBrowser(t)

	b.do("loading the dashboard", chromedp.Navigate(a.base+"/dashboard/"), chromedp.WaitVisible(chromedp.ID("tasks-heading")))
	b.waitFor("the empty list", `!document.getElementById("tasks-empty").hidden && !document.getElementById("counts-empty").hidden`)
	b.shot("empty")

	// Send async requests through the test form.
	b.do("opening the test form", chromedp.Click(chromedp.CSS("#send-section > summary")))
	var quick []string
	for i := range 3 {
		quick = append(quick, b.send("/slow?ms=300", fmt.Sprintf(`{"n": %d}`, i)))
	}
	slowID := b.send("/slow?ms=60000", "a long job")
	failID := b.send("/fail", "<b>not html</b>")
	b.shot("sent")

	// They appear in the list, newest first, and reach their statuses.
	b.waitFor("every sent task in the list", fmt.Sprintf(`%s && %s && %s`, rowStatus(slowID), rowStatus(failID), rowStatus(quick[0])))
	order := b.eval(`[...document.querySelectorAll("#tasks-body tr")].map(tr => tr.dataset.id).join(" ")`)
	if want := strings.Join([]string{failID, slowID, quick[2], quick[1], quick[0]}, " "); order != want {
		t.Errorf("list order %q, want newest first %q", order, want)
	}
	b.waitFor("the quick tasks to succeed, the slow one to run, the failing one to fail", fmt.Sprintf(
		`%s === "Succeeded" && %s === "Succeeded" && %s === "Succeeded" && %s === "Running" && %s === "Failed"`,
		rowStatus(quick[0]), rowStatus(quick[1]), rowStatus(quick[2]), rowStatus(slowID), rowStatus(failID)))
	b.waitFor("the counts", `(() => {
		const rows = [...document.querySelectorAll("#counts-body tr")].map(tr => tr.textContent);
		return rows.some(r => r.startsWith("slow")) && rows.some(r => r.startsWith("fail")) && rows.some(r => r.startsWith("All targets"));
	})()`)
	b.shot("list")

	// Filter by status.
	b.filterStatus("Running")
	if st := b.eval(rowStatus(failID)); st != "" {
		t.Errorf("the Running filter lists the failed task (%s)", st)
	}
	b.shot("filter-running")

	// Open the running task: its progress and logs show.
	b.open(slowID)
	b.waitFor("the progress of the running task", `!document.getElementById("d-progress-box").hidden &&
		document.getElementById("d-progress").value > 0 && document.getElementById("d-logs").children.length > 0`)
	if st := b.eval(`document.getElementById("d-status").textContent`); st != "Running" {
		t.Errorf("detail status %q, want Running", st)
	}
	b.shot("detail-running")

	// By keyboard: Escape goes back to the list with the focus on the
	// task's link, and Enter opens it again.
	b.do("pressing Escape", chromedp.KeyEvent(kb.Escape))
	b.waitFor("the list with the focus on the task", fmt.Sprintf(
		`!document.getElementById("list-view").hidden && document.activeElement.closest("tr")?.dataset.id === %q`, slowID))
	b.do("pressing Enter", chromedp.KeyEvent(kb.Enter))
	b.waitFor("the detail view again", fmt.Sprintf(
		`!document.getElementById("detail-view").hidden && document.getElementById("d-id").textContent === %q &&
		document.activeElement === document.getElementById("detail-heading")`, slowID))

	// Stop it: it becomes Stopped.
	b.do("stopping", chromedp.Click(chromedp.ID("d-stop")))
	b.waitFor("the task to become Stopped", `document.getElementById("d-status").textContent === "Stopped" &&
		document.getElementById("d-action-result").textContent.startsWith("Stopped: the handler has returned")`)
	if tk := query(t, a.q, slowID); tk.Status != task.Stopped {
		t.Errorf("stopped task is %s in the queue", tk.Status)
	}
	b.shot("stopped")

	// Back to the list, filter the failed tasks, open the one that failed.
	b.do("going back", chromedp.Click(chromedp.ID("back")))
	b.waitFor("the list", `!document.getElementById("list-view").hidden`)
	b.filterStatus("Failed")
	b.open(failID)
	b.waitFor("the failed response and its delivery", `document.getElementById("d-return").textContent.includes("<img src=x") &&
		document.getElementById("d-dest").textContent === "onFailuredelivered1"`)
	b.shot("detail-failed")

	// Retry it: it runs again and succeeds.
	b.do("retrying", chromedp.Click(chromedp.ID("d-retry")))
	b.waitFor("the retried task to succeed", `document.getElementById("d-status").textContent === "Succeeded" &&
		document.getElementById("d-action-result").textContent === "The retried task ran again: Succeeded after attempt 2."`)
	b.waitFor("both deliveries", `document.getElementById("d-dest").textContent === "onFailuredelivered1onSuccessdelivered1"`)
	events := b.eval(`[...document.querySelectorAll("#d-events tr")].map(tr => tr.textContent).join("\n")`)
	if !strings.Contains(events, "retried through the task API") || strings.Count(events, "Running") != 2 {
		t.Errorf("history after retry:\n%s", events)
	}
	if tk := query(t, a.q, failID); tk.Status != task.Succeeded || tk.Attempts != 2 {
		t.Errorf("retried task: %s after %d attempts", tk.Status, tk.Attempts)
	}
	b.shot("retried")

	// The stop and the retry show in the counts.
	b.do("going back", chromedp.Click(chromedp.ID("back")), chromedp.Click(chromedp.ID("f-reset")))
	b.waitFor("all tasks listed with fresh counts", fmt.Sprintf(`document.querySelectorAll("#tasks-body tr").length === 5 && %s === "Stopped" &&
		[...document.querySelectorAll("#counts-body tr")].some(tr => tr.textContent.startsWith("fail") && tr.querySelectorAll("button.count").length === 2)`,
		rowStatus(slowID)))
	b.shot("counts")

	// A number in the counts lists those tasks.
	b.do("selecting the count of Stopped slow tasks",
		chromedp.Click(chromedp.CSS(`#counts-body tr:nth-child(2) > :nth-child(8) button`)))
	b.waitFor("the list of Stopped slow tasks", fmt.Sprintf(`location.hash === "#/?status=Stopped&target=slow" &&
		document.querySelectorAll("#tasks-body tr").length === 1 && %s === "Stopped"`, rowStatus(slowID)))

	// Page through more tasks than a page holds: 45 more, delayed an hour
	// so that they stay Enqueued.
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	for range 45 {
		req, _ := http.NewRequest(http.MethodPost, a.base+"/slow?ms=1", nil)
		req.Header.Set(trigger.HeaderInvocationType, "Async")
		req.Header.Set(trigger.HeaderAsyncDelay, "3600")
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusAccepted {
			t.Fatalf("enqueue: %s", res.Status)
		}
	}
	b.do("listing 20 tasks a page",
		chromedp.Click(chromedp.ID("f-reset")),
		chromedp.SetValue(chromedp.ID("f-limit"), "20"),
		chromedp.Click(chromedp.CSS(`#filters button[type="submit"]`)))
	pageIDs := func(label string) []string {
		t.Helper()
		b.waitFor("page "+label, fmt.Sprintf(`document.getElementById("page-info").textContent.endsWith(%q)`, label))
		return strings.Fields(b.eval(`[...document.querySelectorAll("#tasks-body tr")].map(tr => tr.dataset.id).join(" ")`))
	}
	p1 := pageIDs("tasks 1–20")
	b.do("next page", chromedp.Click(chromedp.ID("next")))
	p2 := pageIDs("tasks 21–40")
	b.shot("page-2")
	b.do("next page", chromedp.Click(chromedp.ID("next")))
	p3 := pageIDs("tasks 41–50")
	if next := b.eval(`String(document.getElementById("next").disabled)`); next != "true" {
		t.Error("Next is enabled on the last page")
	}
	b.do("previous page", chromedp.Click(chromedp.ID("prev")))
	if back := pageIDs("tasks 21–40"); strings.Join(back, " ") != strings.Join(p2, " ") {
		t.Errorf("page 2 again:\n%v\nwas:\n%v", back, p2)
	}
	seen := map[string]bool{}
	for _, id := range slices.Concat(p1, p2, p3) {
		if seen[id] {
			t.Errorf("task %s on two pages", id)
		}
		seen[id] = true
	}
	if len(p1) != 20 || len(p2) != 20 || len(p3) != 10 || p3[len(p3)-1] != quick[0] {
		t.Errorf("pages of %d, %d and %d tasks, the last ending with %v", len(p1), len(p2), len(p3), p3[len(p3)-1:])
	}

	// On a phone-sized screen.
	b.do("narrowing the window", chromedp.EmulateViewport(390, 844))
	b.do("opening a task", chromedp.Click(chromedp.CSS(fmt.Sprintf(`#tasks-body tr[data-id=%q] a`, p2[0]))))
	b.waitFor("the detail view", fmt.Sprintf(`document.getElementById("d-id").textContent === %q`, p2[0]))
	b.shot("narrow-detail")

	// Nothing from the API ran as HTML, and the page broke no CSP rule and
	// threw nothing.
	if x := b.eval(`String(window.__xss)`); x != "undefined" {
		t.Errorf("window.__xss is %s: data was rendered as HTML", x)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.console {
		if m.IsException() || m.Type == chromedp.ConsoleError || strings.Contains(m.Text, "Content Security Policy") {
			t.Errorf("console: %s", m)
		}
	}
}

// lockedBuffer collects the browser's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
