package invoke_test

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// testBundle is a real queue and a scheduler over it. Most tests build it
// inside a synctest bubble, so that backoff, timeouts and MaxAge run on
// the bubble's fake clock: the queue's goroutines, the scheduler's and the
// handlers' all belong to the bubble, and time jumps only when every one
// of them is blocked.
type testBundle struct {
	t     *testing.T
	q     *queue.Queue
	sched *invoke.Scheduler

	cancel  context.CancelFunc
	runDone chan struct{}
	runErr  error
}

// queueOptions keeps retention out of the way: a purge tick would keep a
// bubble from ever being idle, and would move the fake clock on its own.
func queueOptions(t testing.TB) *queue.Options {
	return &queue.Options{Logger: testLogger(t), PurgeInterval: 365 * 24 * time.Hour}
}

func testLogger(t testing.TB) *slog.Logger {
	if tt, ok := t.(interface{ Output() io.Writer }); ok {
		return slog.New(slog.NewTextHandler(tt.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// setup opens a queue in t.TempDir() (index-checked on cleanup) and a
// scheduler over it. opts may be nil.
func setup(t *testing.T, opts *invoke.Options) *testBundle {
	t.Helper()
	q := testutil.OpenQueue(t, queueOptions(t))
	return newBundle(t, q, opts)
}

// openQueue opens a queue for a test that runs no scheduler in a bubble.
func openQueue(t *testing.T) *queue.Queue {
	t.Helper()
	return testutil.OpenQueue(t, queueOptions(t))
}

func newBundle(t *testing.T, q *queue.Queue, opts *invoke.Options) *testBundle {
	t.Helper()
	var o invoke.Options
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	s, err := invoke.New(q, &o)
	if err != nil {
		t.Fatal(err)
	}
	return &testBundle{t: t, q: q, sched: s}
}

func (b *testBundle) register(name string, h http.Handler, p *invoke.Policy) {
	b.t.Helper()
	if err := b.sched.Register(name, h, p); err != nil {
		b.t.Fatalf("Register(%q): %v", name, err)
	}
}

// start runs the scheduler until the test ends (or stopRun is called).
func (b *testBundle) start() {
	b.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	b.runDone = make(chan struct{})
	go func() {
		defer close(b.runDone)
		b.runErr = b.sched.Run(ctx)
	}()
	b.t.Cleanup(func() {
		if err := b.stopRun(); err != nil {
			b.t.Errorf("Run: %v", err)
		}
	})
}

// stopRun cancels Run's context and returns what Run returned.
func (b *testBundle) stopRun() error {
	b.cancel()
	<-b.runDone
	return b.runErr
}

func (b *testBundle) enqueue(job *queue.Job) string {
	b.t.Helper()
	if job.Request == nil {
		job.Request = getRequest("/")
	}
	r, err := b.sched.Enqueue(context.Background(), job)
	if err != nil {
		b.t.Fatalf("Enqueue: %v", err)
	}
	return r.ID
}

func (b *testBundle) task(id string) *task.Task {
	b.t.Helper()
	tk, err := task.Query(context.Background(), b.q, id)
	if err != nil {
		b.t.Fatalf("Query(%s): %v", id, err)
	}
	return tk
}

// wantStatus checks a task's status and attempt count.
func (b *testBundle) wantStatus(id string, status task.Status, attempts int) *task.Task {
	b.t.Helper()
	tk := b.task(id)
	if tk.Status != status || tk.Attempts != attempts {
		b.t.Fatalf("task %s is %s after %d attempts (last error %q); want %s after %d",
			id, tk.Status, tk.Attempts, tk.LastError, status, attempts)
	}
	return tk
}

func getRequest(uri string) *reqcodec.Request {
	return &reqcodec.Request{Method: http.MethodGet, RequestURI: uri, Proto: "HTTP/1.1", Host: "example.com"}
}

// storeRequest keeps what the trigger keeps of an accepted request, so
// that tests can route an original request through a ServeMux and replay
// it: method, URI, host, headers, remote address, route pattern and path
// values, the values capture keeps (capture may be nil), inline body.
func storeRequest(r *http.Request, capture func(*http.Request) map[string]string, body []byte) *reqcodec.Request {
	req := &reqcodec.Request{
		Method:     r.Method,
		RequestURI: r.URL.RequestURI(),
		Proto:      r.Proto,
		Host:       r.Host,
		RemoteAddr: r.RemoteAddr,
		Header:     r.Header.Clone(),
		Pattern:    r.Pattern,
		BodySize:   int64(len(body)),
		Body:       body,
	}
	// The wildcards of the pattern, in order.
	for rest := r.Pattern; ; {
		i := strings.IndexByte(rest, '{')
		j := strings.IndexByte(rest, '}')
		if i < 0 || j < i {
			break
		}
		name := strings.TrimSuffix(rest[i+1:j], "...")
		rest = rest[j+1:]
		if name != "$" {
			req.PathValues = append(req.PathValues, reqcodec.KV{Key: name, Value: r.PathValue(name)})
		}
	}
	var values map[string]string
	if capture != nil {
		values = capture(r)
	}
	for _, k := range slices.Sorted(maps.Keys(values)) {
		req.Values = append(req.Values, reqcodec.KV{Key: k, Value: values[k]})
	}
	return req
}

// call is what a probe saw of one attempt.
type call struct {
	at         time.Time // when the handler was entered
	attempt    task.Attempt
	retryCount string // X-Fc-Retry-Count
	cause      error  // context.Cause of r.Context() when the handler returned
	deadline   time.Time
}

// probe is a handler that reports each attempt on calls and then answers
// with respond, which gets the attempt number (1-based).
type probe struct {
	calls   chan call
	respond func(w http.ResponseWriter, r *http.Request, n int)
}

func newProbe(respond func(w http.ResponseWriter, r *http.Request, n int)) *probe {
	return &probe{calls: make(chan call, 100), respond: respond}
}

func (p *probe) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a, _ := task.FromContext(r.Context())
	c := call{at: time.Now(), attempt: a, retryCount: r.Header.Get(invoke.HeaderRetryCount)}
	c.deadline, _ = r.Context().Deadline()
	defer func() {
		c.cause = context.Cause(r.Context())
		p.calls <- c
	}()
	p.respond(w, r, a.Number)
}

// next returns the next attempt, failing the test if none comes within
// limit of fake time.
func (p *probe) next(t *testing.T, limit time.Duration) call {
	t.Helper()
	select {
	case c := <-p.calls:
		return c
	case <-time.After(limit):
		t.Fatalf("no attempt within %s", limit)
		return call{}
	}
}

// answer returns a respond func that writes code.
func answer(code int) func(http.ResponseWriter, *http.Request, int) {
	return func(w http.ResponseWriter, _ *http.Request, _ int) { w.WriteHeader(code) }
}

// gate is a handler that holds every attempt until it is released or its
// context ends, and measures how many attempts it holds at once.
type gate struct {
	in, max atomic.Int64
	release chan struct{}
	// entered gets each attempt's task ID; causes gets context.Cause of
	// each attempt that ended by its context.
	entered chan string
	causes  chan error
}

func newGate() *gate {
	return &gate{release: make(chan struct{}), entered: make(chan string, 1000), causes: make(chan error, 1000)}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := g.in.Add(1)
	defer g.in.Add(-1)
	for m := g.max.Load(); n > m && !g.max.CompareAndSwap(m, n); m = g.max.Load() {
	}
	a, _ := task.FromContext(r.Context())
	g.entered <- a.ID
	select {
	case <-g.release:
	case <-r.Context().Done():
		// Give up as handlers commonly do: return, answering nothing.
		g.causes <- context.Cause(r.Context())
	}
}

// advance moves a synctest bubble's fake clock on by d and waits for the
// bubble to settle. No real time passes: inside a bubble, time.Sleep only
// returns once every other goroutine is blocked, and then at once.
func advance(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

// watchedQueue is a real queue that reports every attempt it records, for
// tests and benchmarks that run outside a bubble and must not poll.
type watchedQueue struct {
	queue.Backend
	finished chan finished
}

type finished struct {
	id     string
	status task.Status
	err    error
}

func watch(q queue.Backend) *watchedQueue {
	return &watchedQueue{Backend: q, finished: make(chan finished, 1024)}
}

func (w *watchedQueue) Finish(ctx context.Context, l *queue.Lease, o queue.Outcome) (task.Status, error) {
	st, err := w.Backend.Finish(ctx, l, o)
	w.finished <- finished{id: l.ID, status: st, err: err}
	return st, err
}

// runScheduler runs s until the returned func is called, which stops it
// and fails t if Run returned an error.
func runScheduler(t *testing.T, s *invoke.Scheduler) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}
