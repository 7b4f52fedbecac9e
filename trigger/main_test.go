package trigger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Where the test server mounts things.
const (
	target   = "work"
	workPath = "/work/"
	taskPath = "/tasks/"
)

// testBundle is one service under test: a real queue in a temporary
// directory, a real scheduler, the middleware around a recording handler
// and the task API, served over real HTTP.
type testBundle struct {
	q      *queue.Queue
	sched  *invoke.Scheduler
	srv    *httptest.Server
	client *http.Client
	// calls receives every run of the handler: sync calls and replays.
	calls  chan handlerCall
	answer func(r *http.Request) int
}

type setupOpts struct {
	trigger *trigger.Options // nil: TaskPath taskPath
	policy  *invoke.Policy
	api     *trigger.APIOptions
	// handler replaces the recording handler; calls then stays empty.
	handler http.Handler
	// answer picks the recording handler's status; if nil, 201.
	answer func(r *http.Request) int
	// other, if set, is registered as target "other" at /other/{name}.
	other http.Handler
	// enqueuer wraps the scheduler, to inject failures.
	enqueuer func(trigger.Enqueuer) trigger.Enqueuer
	// run starts the scheduler; without it, accepted tasks stay Enqueued.
	run bool
}

// handlerCall is what the recording handler saw.
type handlerCall struct {
	Method  string
	URL     string
	Name    string // r.PathValue("name")
	Header  http.Header
	Body    string
	Attempt task.Attempt
	Replay  bool
}

// setup starts a bundle; everything it starts is stopped on cleanup, the
// scheduler before the queue, whose indexes are then checked.
func setup(t *testing.T, o setupOpts) *testBundle {
	t.Helper()
	q := testutil.OpenQueue(t, &queue.Options{Logger: discard})
	sched, err := invoke.New(q, &invoke.Options{Logger: discard, ShutdownTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b := &testBundle{q: q, sched: sched, calls: make(chan handlerCall, 1000), answer: o.answer}

	var e trigger.Enqueuer = sched
	if o.enqueuer != nil {
		e = o.enqueuer(sched)
	}
	opts := o.trigger
	if opts == nil {
		opts = &trigger.Options{TaskPath: taskPath}
	}
	h := o.handler
	if h == nil {
		h = http.HandlerFunc(b.record)
	}
	tr := trigger.New(e, opts)
	mux := http.NewServeMux()
	mux.Handle(workPath+"{name}", tr.Async(target, h, o.policy))
	if o.other != nil {
		mux.Handle("/other/{name}", tr.Async("other", o.other, nil))
	}
	mux.Handle(taskPath, http.StripPrefix(strings.TrimSuffix(taskPath, "/"), trigger.TaskAPI(q, o.api)))

	if o.run {
		done := make(chan error, 1)
		go func() { done <- sched.Run(context.Background()) }()
		t.Cleanup(func() {
			if err := sched.Stop(context.Background()); err != nil {
				t.Errorf("scheduler stop: %v", err)
			}
			if err := <-done; err != nil {
				t.Errorf("scheduler run: %v", err)
			}
		})
	} else {
		t.Cleanup(func() { _ = sched.Stop(context.Background()) })
	}
	b.srv = newTestServer(t, mux)
	b.client = b.srv.Client()
	return b
}

// newTestServer starts an httptest server that is closed on cleanup,
// along with its client's idle connections.
func newTestServer(tb testing.TB, h http.Handler) *httptest.Server {
	srv := httptest.NewServer(h)
	tb.Cleanup(srv.Close)
	return srv
}

var discard = slog.New(slog.DiscardHandler)

// record is the default handler: it reports the call and answers in a way
// the middleware could not have made up.
func (b *testBundle) record(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a, replay := task.FromContext(r.Context())
	select {
	case b.calls <- handlerCall{
		Method: r.Method, URL: r.URL.RequestURI(), Name: r.PathValue("name"),
		Header: r.Header.Clone(), Body: string(body), Attempt: a, Replay: replay,
	}:
	default:
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Handler", "ran")
	w.Header().Add("Set-Cookie", "a=1")
	w.Header().Add("Set-Cookie", "b=2")
	status := http.StatusCreated
	if b.answer != nil {
		status = b.answer(r)
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, "handled %s %s: %s", r.Method, r.PathValue("name"), body)
}

// result is a response read whole.
type result struct {
	status int
	header http.Header
	body   []byte
}

// code returns the code of a JSON error body, or "".
func (r *result) code() string {
	var e struct{ Code string }
	_ = json.Unmarshal(r.body, &e)
	return e.Code
}

func (b *testBundle) do(t testing.TB, req *http.Request) *result {
	t.Helper()
	res, err := b.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return readResult(t, res)
}

func readResult(t testing.TB, res *http.Response) *result {
	t.Helper()
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return &result{status: res.StatusCode, header: res.Header, body: body}
}

// post sends body to the work route with the headers given as name, value
// pairs (a name may repeat).
func (b *testBundle) post(t testing.TB, path, body string, header ...string) *result {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	return b.do(t, req)
}

// accept posts an async request and fails the test unless it is accepted;
// it returns the task ID.
func (b *testBundle) accept(t testing.TB, body string, header ...string) string {
	t.Helper()
	res := b.post(t, workPath+"alpha", body, append([]string{trigger.HeaderInvocationType, "Async"}, header...)...)
	if res.status != http.StatusAccepted {
		t.Fatalf("async request: status %d, body %s", res.status, res.body)
	}
	return res.header.Get(trigger.HeaderRequestID)
}

func (b *testBundle) get(t testing.TB, path string) *result {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, b.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b.do(t, req)
}

// stored lists every task in the queue, oldest first.
func (b *testBundle) stored(t testing.TB) []*task.Task {
	t.Helper()
	var all []*task.Task
	f := task.Filter{Order: task.OldestFirst, Limit: task.MaxLimit}
	for {
		page, err := task.List(context.Background(), b.q, f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page.Tasks...)
		if page.Next == "" {
			return all
		}
		f.Cursor = page.Next
	}
}

func (b *testBundle) query(t testing.TB, id string) *task.Task {
	t.Helper()
	tk, err := task.Query(context.Background(), b.q, id)
	if err != nil {
		t.Fatalf("query %q: %v", id, err)
	}
	return tk
}

// blobs lists the files in the queue's blob directory.
func (b *testBundle) blobs(t testing.TB) []os.DirEntry {
	t.Helper()
	entries, err := os.ReadDir(b.q.Path() + ".blobs")
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

func (b *testBundle) blobPath(name string) string {
	return filepath.Join(b.q.Path()+".blobs", name)
}

// stopScheduler stops the scheduler and waits until every attempt it ran
// has been recorded: after it, the store is quiet.
func (b *testBundle) stopScheduler(t testing.TB) {
	t.Helper()
	if err := b.sched.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// nextCall waits for the handler to run.
func (b *testBundle) nextCall(t testing.TB) handlerCall {
	t.Helper()
	select {
	case c := <-b.calls:
		return c
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not run within 30s")
		return handlerCall{}
	}
}
