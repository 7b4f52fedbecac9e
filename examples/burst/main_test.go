package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestBurst runs a smaller burst in-process and checks what the example
// promises: every request accepted, none failed, never more than
// Concurrency orders at once nor more starts than the rate allows, and
// the Observer's expvar counters served at /debug/vars.
func TestBurst(t *testing.T) {
	t.Parallel()
	const requests = 500
	cfg := config{
		requests:    requests,
		clients:     20,
		concurrency: 4,
		rate:        400, // low enough to bind: the drain takes over a second
		rateBurst:   4,
		work:        time.Millisecond,
	}
	r := runBurst(t, cfg, func(base string, rep *report) {
		// The server is still up (keep): read the expvar counters.
		client := &http.Client{Timeout: 10 * time.Second}
		defer client.CloseIdleConnections()
		res, err := client.Get(base + "/debug/vars")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var vars struct {
			Offload struct {
				Events   map[string]int64
				Finished map[string]int64
				Inflight int64
			}
			Memstats map[string]any
		}
		if err := json.NewDecoder(res.Body).Decode(&vars); err != nil {
			t.Fatalf("/debug/vars: %v", err)
		}
		ev := vars.Offload.Events
		if ev["enqueued"] != requests || ev["started"] != requests || ev["finished"] != requests ||
			vars.Offload.Finished["Succeeded"] != requests || vars.Offload.Inflight != 0 {
			t.Errorf("/debug/vars offload: %+v", vars.Offload)
		}
		if vars.Memstats == nil {
			t.Errorf("/debug/vars lacks the runtime's memstats")
		}
	})

	if r.Accepted != requests || r.Rejected != 0 || r.Errors != 0 {
		t.Errorf("accepted %d, rejected %d, errors %d (%s); want all %d accepted",
			r.Accepted, r.Rejected, r.Errors, r.FirstError, requests)
	}
	if r.Stored != requests || r.Succeeded != requests || r.Failed != 0 {
		t.Errorf("tasks: %d stored, %d succeeded, %d failed", r.Stored, r.Succeeded, r.Failed)
	}
	if r.PeakInFlight < 1 || r.PeakInFlight > int64(cfg.concurrency) {
		t.Errorf("peak in flight %d, want 1..%d", r.PeakInFlight, cfg.concurrency)
	}
	// The scheduler counts a start when it takes the token; the handler
	// sees it after the lease's commit, a few milliseconds later, so allow
	// the tokens of 20ms for that lag.
	if slack := int(cfg.rate*0.020) + 1; r.MaxStarts > r.StartLimit()+slack {
		t.Errorf("%d starts within %s, over the rate limit's %d (+%d)", r.MaxStarts, rateWindow, r.StartLimit(), slack)
	}
	// The rate, not the clients, set the pace: 500 starts at 400/s take
	// over a second after the first 4.
	if least := time.Duration(float64(requests-cfg.rateBurst) / cfg.rate * float64(time.Second)); r.DrainTime < least {
		t.Errorf("drained in %s, faster than the rate allows (%s)", r.DrainTime, least)
	}
	if r.PeakQueue < 1 || r.PeakQueue > requests {
		t.Errorf("peak queue depth %d", r.PeakQueue)
	}
	if len(r.Accept) != requests || len(r.EndToEnd) != requests {
		t.Errorf("%d accept and %d end-to-end latencies, want %d each", len(r.Accept), len(r.EndToEnd), requests)
	}
}

// TestBackpressure bounds the backlog with MaxQueued: past it clients
// get 503 with Retry-After, and nothing beyond the bound is stored.
func TestBackpressure(t *testing.T) {
	t.Parallel()
	const maxQueued = 20
	cfg := config{
		requests:    200,
		clients:     10,
		concurrency: 4,
		maxQueued:   maxQueued,
		rateBurst:   1,
		work:        50 * time.Millisecond, // 80 orders a second: the burst outruns it
	}
	r := runBurst(t, cfg, nil)

	if r.Rejected == 0 || r.Errors != 0 || r.Accepted+r.Rejected != cfg.requests {
		t.Fatalf("accepted %d, rejected %d, errors %d (%s): want some rejected, no errors",
			r.Accepted, r.Rejected, r.Errors, r.FirstError)
	}
	if r.RetryAfter == "" || r.NoRetryAfter != 0 {
		t.Errorf("503s: Retry-After %q, %d without one", r.RetryAfter, r.NoRetryAfter)
	}
	// At any moment at most maxQueued tasks were unfinished, so no more
	// than maxQueued plus those finished by the end of the burst can have
	// been accepted.
	if int64(r.Accepted) > maxQueued+r.FinishedDuringBurst {
		t.Errorf("accepted %d, over MaxQueued %d plus the %d finished during the burst", r.Accepted, maxQueued, r.FinishedDuringBurst)
	}
	if r.PeakQueue > maxQueued {
		t.Errorf("peak queue depth %d, over MaxQueued %d", r.PeakQueue, maxQueued)
	}
	// Only what was answered 202 is stored, and all of it ran.
	if r.Stored != int64(r.Accepted) || r.Succeeded != int64(r.Accepted) {
		t.Errorf("%d stored, %d succeeded, for %d accepted", r.Stored, r.Succeeded, r.Accepted)
	}
}

// A -db that holds an earlier run's tasks is refused before anything is
// sent: its tasks would be counted, run and waited for as this run's.
func TestReusedDatabaseRefused(t *testing.T) {
	t.Parallel()
	cfg := config{
		addr: "127.0.0.1:0", dbPath: filepath.Join(t.TempDir(), "burst.db"),
		requests: 10, clients: 2, concurrency: 2, rateBurst: 1, work: time.Millisecond,
		log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var first lockedBuffer
	if err := run(ctx, cfg, &first); err != nil {
		t.Fatalf("first run: %v\n%s", err, first.String())
	}
	var second lockedBuffer
	err := run(ctx, cfg, &second)
	if err == nil || !strings.Contains(err.Error(), "earlier run") {
		t.Fatalf("second run into the same -db: %v; want it refused as holding an earlier run's tasks", err)
	}
	if strings.Contains(second.String(), "accepted") {
		t.Errorf("the refused run reported:\n%s", second.String())
	}
}

// runBurst runs the example with cfg until it reports, calls during (if
// not nil) while the server still serves, then stops it as SIGINT would.
// It checks the printed report and returns the figures.
func runBurst(t *testing.T, cfg config, during func(base string, rep *report)) *report {
	t.Helper()
	cfg.addr = "127.0.0.1:0"
	cfg.dbPath = filepath.Join(t.TempDir(), "burst.db")
	cfg.keep = true
	cfg.log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	base := make(chan string, 1)
	reports := make(chan *report, 1)
	cfg.onListen = func(b string) { base <- b }
	cfg.onReport = func(r *report) { reports <- r }

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out lockedBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, &out) }()
	var r *report
	select {
	case r = <-reports:
	case err := <-done:
		t.Fatalf("run returned before its report: %v\n%s", err, out.String())
	}
	if during != nil {
		during(<-base, r)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	t.Logf("output:\n%s", out.String())
	for _, want := range []string{"accepted", "rejected", "peak queue depth", "drain time", "accept latency", "end-to-end latency", "p99"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	return r
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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
