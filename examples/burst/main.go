// Command burst is the traffic-spike scenario (a pulse load test, a flash
// sale) run against offload on this machine: a burst of async requests
// from many concurrent clients hits one target, every request is stored and
// answered 202 at once, and the scheduler works the backlog off at the pace
// the target allows.
//
//	go run ./examples/burst
//
// It starts a server with one target, POST /orders, whose handler checks
// the order and waits -work (standing in for a payment provider's call).
// The target runs under an invoke.Policy with Concurrency (default 4) and
// RateLimit (default 300 starts a second), so the handler never sees more
// than 4 orders at once nor more than the rate, however hard the burst.
// Then it sends the burst (default 10,000 requests from 200 clients, to
// 127.0.0.1 only), waits for the backlog to drain, and prints what
// happened: accepted and rejected requests, the peak queue depth
// (task.Counts), the drain time, and the accept and end-to-end latency
// distributions.
//
// The scheduler's Observer hook feeds expvar counters, one per event kind,
// served at /debug/vars beside the Go runtime's: the hook is how offload
// reports to a metrics system without depending on one.
//
// With -max-queued N the target's backlog is bounded: past N unfinished
// tasks a client gets 503 with Retry-After instead of a 202, and nothing
// beyond the bound is stored.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"expvar"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

const target = "orders"

// rateWindow is the window over which handler starts are counted against
// the rate limit.
const rateWindow = time.Second

type config struct {
	addr        string
	dbPath      string
	requests    int
	clients     int
	concurrency int
	rate        float64
	rateBurst   int
	maxQueued   int
	work        time.Duration
	keep        bool

	log      *slog.Logger      // nil: text to stderr, warnings and errors only
	onListen func(base string) // called once the server listens
	onReport func(*report)     // called with the figures once the backlog has drained
}

func main() {
	var cfg config
	flag.StringVar(&cfg.addr, "addr", "127.0.0.1:8080", "loopback address to listen on and send the burst to")
	flag.StringVar(&cfg.dbPath, "db", "", "queue database file (default: a temporary one, removed at exit)")
	flag.IntVar(&cfg.requests, "requests", 10000, "requests in the burst")
	flag.IntVar(&cfg.clients, "clients", 200, "concurrent clients sending them")
	flag.IntVar(&cfg.concurrency, "concurrency", 4, "orders the handler works on at once (Policy.Concurrency)")
	flag.Float64Var(&cfg.rate, "rate", 300, "orders started per second at most (Policy.RateLimit); 0 for no limit")
	flag.IntVar(&cfg.rateBurst, "rate-burst", 4, "starts allowed at once within the rate (Policy.RateBurst)")
	flag.IntVar(&cfg.maxQueued, "max-queued", 0, "unfinished orders stored at most, past which clients get 503 (Policy.MaxQueued); 0 for no bound")
	flag.DurationVar(&cfg.work, "work", time.Millisecond, "time the handler spends on one order")
	flag.BoolVar(&cfg.keep, "keep", false, "keep serving after the burst, until Ctrl-C, to look at /debug/vars and /tasks/")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, cfg, os.Stdout)
	switch {
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(os.Stderr, "burst: interrupted")
	case err != nil:
		fmt.Fprintln(os.Stderr, "burst:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, stdout io.Writer) error {
	log := cfg.log
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if cfg.requests < 1 || cfg.clients < 1 || cfg.concurrency < 1 || cfg.rate < 0 || cfg.rateBurst < 1 || cfg.maxQueued < 0 || cfg.work < 0 {
		return errors.New("-requests, -clients, -concurrency and -rate-burst must be positive; -rate, -max-queued and -work not negative")
	}
	// The burst goes to this program's own server, on a loopback address
	// only: it is a load test, not to be pointed at anything else.
	host, _, err := net.SplitHostPort(cfg.addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("-addr %s: the burst is sent to a loopback address only", cfg.addr)
	}

	dbPath := cfg.dbPath
	if dbPath == "" {
		dir, err := os.MkdirTemp("", "offload-burst")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		dbPath = filepath.Join(dir, "offload.db")
	}
	db, err := queue.Open(dbPath, &queue.Options{Logger: log})
	if err != nil {
		return err
	}
	defer db.Close()
	// The report counts the target's tasks in the database: an earlier
	// run's would be counted (and run, and waited for) as this one's.
	counts, err := task.Counts(ctx, db)
	if err != nil {
		return err
	}
	for _, c := range counts {
		if c.Target == target && c.N > 0 {
			return fmt.Errorf("-db %s already holds tasks of %s from an earlier run; name a new file, or leave -db out for a temporary one", dbPath, target)
		}
	}

	// The Observer hook feeds expvar: a counter per event kind, and one per
	// final status. It runs on the scheduler's goroutines, so it only adds.
	vars, events, finals := new(expvar.Map).Init(), new(expvar.Map).Init(), new(expvar.Map).Init()
	vars.Set("events", events)
	vars.Set("finished", finals)
	var finished atomic.Int64
	drained := make(chan struct{}, 1) // a task of the target finished
	observe := func(e invoke.Event) {
		events.Add(string(e.Kind), 1)
		if e.Kind == invoke.EventFinished || e.Kind == invoke.EventExpired {
			finals.Add(string(e.Status), 1)
			if e.Target == target {
				finished.Add(1)
				select {
				case drained <- struct{}{}:
				default:
				}
			}
		}
	}
	sched, err := invoke.New(db, &invoke.Options{Logger: log, Observer: observe})
	if err != nil {
		return err
	}

	h := &orders{work: cfg.work}
	vars.Set("inflight", expvar.Func(func() any { return h.inflight.Load() }))
	tr := trigger.New(sched, &trigger.Options{TaskPath: "/tasks/"})
	policy := &invoke.Policy{
		Concurrency: cfg.concurrency,
		RateLimit:   rate.Limit(cfg.rate),
		RateBurst:   cfg.rateBurst,
		MaxQueued:   cfg.maxQueued,
	}
	mux := http.NewServeMux()
	mux.Handle("POST /orders", tr.Async(target, h, policy))
	mux.Handle("/tasks/", http.StripPrefix("/tasks", trigger.TaskAPI(db, nil)))
	mux.Handle("GET /debug/vars", varsHandler("offload", vars))

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	base := "http://" + ln.Addr().String()
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	schedDone := make(chan error, 1)
	go func() { schedDone <- sched.Run(context.WithoutCancel(ctx)) }()
	defer func() {
		// Shut down: stop the scheduler (running orders finish while new
		// async requests get 503 + Retry-After), stop serving, then the
		// deferred db.Close.
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := sched.Stop(sctx); err != nil {
			log.Warn("scheduler stop", "err", err)
		}
		<-schedDone
		hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer hcancel()
		if err := srv.Shutdown(hctx); err != nil {
			log.Warn("http shutdown", "err", err)
		}
		<-srvDone
	}()

	printStart(stdout, base, cfg)
	if cfg.onListen != nil {
		cfg.onListen(base)
	}

	// Sample the queue depth while the burst runs and drains.
	var peak atomic.Int64
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var sampling sync.WaitGroup
	start := time.Now()
	sampling.Go(func() { sample(sampleCtx, db, &peak, stdout, start, &finished) })
	defer func() { stopSampling(); sampling.Wait() }()

	rep, err := sendBurst(ctx, base+"/orders", cfg.requests, cfg.clients)
	if err != nil {
		return err
	}
	rep.BurstTime = time.Since(start)
	rep.FinishedDuringBurst = finished.Load()
	lastAccept := time.Now()
	for finished.Load() < int64(rep.Accepted) {
		select {
		case <-drained:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	rep.DrainTime = time.Since(start)
	rep.DrainAfterBurst = time.Since(lastAccept)
	stopSampling()
	sampling.Wait()

	rep.Config = cfg
	rep.PeakQueue = peak.Load()
	rep.PeakInFlight = h.peak.Load()
	rep.EndToEnd = h.latencies()
	rep.MaxStarts = maxInWindow(h.startTimes(), rateWindow)
	counts, err = task.Counts(ctx, db)
	if err != nil {
		return err
	}
	for _, c := range counts {
		if c.Target == target {
			rep.Stored += c.N
			switch c.Status {
			case task.Succeeded:
				rep.Succeeded = c.N
			case task.Failed, task.Expired, task.Invalid, task.Stopped:
				rep.Failed += c.N
			}
		}
	}
	rep.print(stdout)
	if cfg.onReport != nil {
		cfg.onReport(rep)
	}

	if cfg.keep {
		fmt.Fprintf(stdout, "\nStill serving at %s (try /debug/vars and /tasks/). Press Ctrl-C to stop.\n", base)
		select {
		case <-ctx.Done():
		case err := <-srvDone:
			srvDone <- err
		}
	}
	return nil
}

// orders is the target's handler: it checks the order and spends cfg.work
// on it, standing in for a payment provider's call. It measures what the
// policy promises: how many orders it works on at once, and when each
// starts.
type orders struct {
	work     time.Duration
	inflight atomic.Int64
	peak     atomic.Int64

	mu     sync.Mutex
	starts []time.Time
	e2e    []time.Duration // from the client's send to the order's completion
}

type order struct {
	ID     int    `json:"id"`
	Item   string `json:"item"`
	Qty    int    `json:"qty"`
	SentAt int64  `json:"sentAt"` // Unix nanoseconds, when the client sent it
}

func (o *orders) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	started := time.Now()
	n := o.inflight.Add(1)
	defer o.inflight.Add(-1)
	for p := o.peak.Load(); n > p && !o.peak.CompareAndSwap(p, n); p = o.peak.Load() {
	}
	o.mu.Lock()
	o.starts = append(o.starts, started)
	o.mu.Unlock()

	var ord order
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&ord); err != nil || ord.Qty < 1 || ord.Item == "" {
		http.Error(w, "bad order", http.StatusBadRequest)
		return
	}
	t := time.NewTimer(o.work)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		http.Error(w, context.Cause(r.Context()).Error(), http.StatusServiceUnavailable)
		return
	}
	done := time.Now()
	o.mu.Lock()
	o.e2e = append(o.e2e, done.Sub(time.Unix(0, ord.SentAt)))
	o.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"order":%d,"status":"confirmed"}`+"\n", ord.ID)
}

func (o *orders) startTimes() []time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.starts)
}

func (o *orders) latencies() []time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.e2e)
}

// maxInWindow returns the most times that fall within any window of
// length w: sliding, not aligned to a clock.
func maxInWindow(times []time.Time, w time.Duration) int {
	slices.SortFunc(times, time.Time.Compare)
	best, lo := 0, 0
	for hi, t := range times {
		for t.Sub(times[lo]) >= w {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

// sample records the largest number of unfinished tasks of the target
// that task.Counts reports, every 10ms until ctx is done, and prints the
// backlog every second.
func sample(ctx context.Context, db task.Store, peak *atomic.Int64, out io.Writer, start time.Time, finished *atomic.Int64) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	printed := start
	for {
		counts, err := task.Counts(context.WithoutCancel(ctx), db)
		if err == nil {
			var n int64
			for _, c := range counts {
				if c.Target == target && !c.Status.Terminal() {
					n += c.N
				}
			}
			if n > peak.Load() {
				peak.Store(n)
			}
			if now := time.Now(); now.Sub(printed) >= time.Second {
				printed = now
				fmt.Fprintf(out, "  %3.0fs  unfinished %6d  finished %6d\n", now.Sub(start).Seconds(), n, finished.Load())
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// report is what a run measured.
type report struct {
	Config              config
	Accepted            int
	Rejected            int    // answered 503
	RetryAfter          string // the Retry-After of the first 503
	NoRetryAfter        int    // 503s without a Retry-After
	Errors              int    // any other answer or a transport error
	FirstError          string
	Accept              []time.Duration // the 202s' latencies
	Reject              []time.Duration // the 503s' latencies
	BurstTime           time.Duration   // from the first request to the last answer
	FinishedDuringBurst int64           // tasks finished when the last answer came
	DrainTime           time.Duration   // from the first request to the last task finished
	DrainAfterBurst     time.Duration   // from the last answer to the last task finished
	PeakQueue           int64           // most unfinished tasks seen by task.Counts
	PeakInFlight        int64           // most orders in the handler at once
	MaxStarts           int             // most handler starts within any rateWindow
	EndToEnd            []time.Duration // from the client's send to the order's completion
	Stored              int64           // tasks in the queue at the end, all statuses
	Succeeded, Failed   int64
}

// StartLimit is the most starts that the rate limit allows within any
// rateWindow: the token bucket's burst plus the rate times the window.
// The scheduler takes a token when it leases a task; the handler starts a
// little later (after the lease's commit), so the starts that the handler
// sees may exceed it by the few tokens of those milliseconds.
func (r *report) StartLimit() int {
	if r.Config.rate == 0 {
		return 0
	}
	return r.Config.rateBurst + int(r.Config.rate*rateWindow.Seconds())
}

func (r *report) print(w io.Writer) {
	c := r.Config
	fmt.Fprintf(w, "\nburst: %d requests from %d clients in %s (%.0f accepts/s)\n",
		c.requests, c.clients, r.BurstTime.Round(time.Millisecond), float64(r.Accepted)/r.BurstTime.Seconds())
	fmt.Fprintf(w, "  accepted            %d\n", r.Accepted)
	rejected := strconv.Itoa(r.Rejected)
	if r.Rejected > 0 {
		rejected += fmt.Sprintf(" (503 with Retry-After: %s; %d without)", r.RetryAfter, r.NoRetryAfter)
	}
	fmt.Fprintf(w, "  rejected            %s\n", rejected)
	if r.Errors > 0 {
		fmt.Fprintf(w, "  errors              %d (first: %s)\n", r.Errors, r.FirstError)
	}
	fmt.Fprintf(w, "  accept latency      %s\n", distribution(r.Accept))
	if r.Rejected > 0 {
		fmt.Fprintf(w, "  reject latency      %s\n", distribution(r.Reject))
	}
	fmt.Fprintf(w, "  peak queue depth    %d unfinished tasks (task.Counts every 10ms)", r.PeakQueue)
	if c.maxQueued > 0 {
		fmt.Fprintf(w, "; MaxQueued %d, %d finished during the burst", c.maxQueued, r.FinishedDuringBurst)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  drain time          %s from the first request, %s after the last answer\n",
		r.DrainTime.Round(time.Millisecond), r.DrainAfterBurst.Round(time.Millisecond))
	fmt.Fprintf(w, "  tasks               %d stored, %d succeeded, %d failed\n", r.Stored, r.Succeeded, r.Failed)
	fmt.Fprintf(w, "  peak in flight      %d (Concurrency %d)\n", r.PeakInFlight, c.concurrency)
	if c.rate > 0 {
		fmt.Fprintf(w, "  most starts in %s   %d (RateLimit %g/s + RateBurst %d = %d, give or take the ms from token to handler)\n",
			rateWindow, r.MaxStarts, c.rate, c.rateBurst, r.StartLimit())
	} else {
		fmt.Fprintf(w, "  most starts in %s   %d (no RateLimit)\n", rateWindow, r.MaxStarts)
	}
	fmt.Fprintf(w, "  end-to-end latency  %s\n", distribution(r.EndToEnd))
}

// distribution formats the percentiles of ds.
func distribution(ds []time.Duration) string {
	if len(ds) == 0 {
		return "(none)"
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	pct := func(p float64) time.Duration {
		return ds[min(len(ds)-1, int(p*float64(len(ds))))]
	}
	round := func(d time.Duration) time.Duration {
		if d < time.Millisecond {
			return d.Round(time.Microsecond)
		}
		return d.Round(100 * time.Microsecond)
	}
	return fmt.Sprintf("p50 %-9s p90 %-9s p99 %-9s max %s",
		round(pct(0.50)), round(pct(0.90)), round(pct(0.99)), round(ds[len(ds)-1]))
}

// sendBurst sends n async orders to url from clients goroutines at once,
// each sending its next request as soon as the last is answered.
func sendBurst(ctx context.Context, url string, n, clients int) (*report, error) {
	transport := &http.Transport{
		MaxIdleConnsPerHost: clients, // keep one connection per client
		MaxConnsPerHost:     clients,
		DisableCompression:  true,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: time.Minute}

	var (
		next int64
		wg   sync.WaitGroup
		mu   sync.Mutex
		rep  = &report{Accept: make([]time.Duration, 0, n)}
	)
	for range clients {
		wg.Go(func() {
			var lats, rejects []time.Duration
			defer func() {
				mu.Lock()
				rep.Accept = append(rep.Accept, lats...)
				rep.Reject = append(rep.Reject, rejects...)
				mu.Unlock()
			}()
			for ctx.Err() == nil {
				id := atomic.AddInt64(&next, 1)
				if id > int64(n) {
					return
				}
				lat, status, retryAfter, err := sendOne(ctx, client, url, int(id))
				mu.Lock()
				switch {
				case err != nil:
					rep.Errors++
					rep.FirstError = cmp.Or(rep.FirstError, err.Error())
				case status == http.StatusAccepted:
					rep.Accepted++
					lats = append(lats, lat)
				case status == http.StatusServiceUnavailable:
					rep.Rejected++
					rejects = append(rejects, lat)
					rep.RetryAfter = cmp.Or(rep.RetryAfter, retryAfter)
					if retryAfter == "" {
						rep.NoRetryAfter++
					}
				default:
					rep.Errors++
					rep.FirstError = cmp.Or(rep.FirstError, fmt.Sprintf("answered %d", status))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return rep, nil
}

// sendOne sends one async order and returns how long the answer took.
func sendOne(ctx context.Context, client *http.Client, url string, id int) (time.Duration, int, string, error) {
	body := fmt.Sprintf(`{"id":%d,"item":"sku-%d","qty":1,"sentAt":%d}`, id, id%100, time.Now().UnixNano())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(trigger.HeaderInvocationType, "Async")
	start := time.Now()
	res, err := client.Do(req)
	if err != nil {
		return 0, 0, "", err
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return time.Since(start), res.StatusCode, res.Header.Get("Retry-After"), nil
}

// varsHandler serves expvar's JSON: the process's published variables
// (cmdline, memstats) and, under name, this run's own. They are not
// published in expvar's global registry, so that run can be called more
// than once in a process (its test does).
func varsHandler(name string, own expvar.Var) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		fmt.Fprintf(w, "{\n%q: %s", name, own)
		expvar.Do(func(kv expvar.KeyValue) {
			fmt.Fprintf(w, ",\n%q: %s", kv.Key, kv.Value)
		})
		fmt.Fprintf(w, "\n}\n")
	})
}

func printStart(w io.Writer, base string, c config) {
	limits := fmt.Sprintf("Concurrency %d", c.concurrency)
	if c.rate > 0 {
		limits += fmt.Sprintf(", RateLimit %g/s (RateBurst %d)", c.rate, c.rateBurst)
	}
	if c.maxQueued > 0 {
		limits += fmt.Sprintf(", MaxQueued %d", c.maxQueued)
	}
	fmt.Fprintf(w, `offload burst listening on %[1]s
target %[2]q: %[3]s; the handler takes %[4]s per order

Sending %[5]d async requests from %[6]d clients to POST %[1]s/orders. While it runs, try:
  curl -s %[1]s/debug/vars       # expvar counters fed by invoke.Options.Observer
  curl -s %[1]s/tasks/-/counts   # the backlog per status (task.Counts)
Add -keep to keep serving after the burst, -max-queued 500 to see backpressure.
`, base, target, limits, c.work, c.requests, c.clients)
}
