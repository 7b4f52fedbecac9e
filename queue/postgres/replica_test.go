package postgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue/postgres"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

// replica is one service instance: a Queue on the shared schema, a
// scheduler over it, and the async middleware behind an HTTP server.
type replica struct {
	name  string
	q     *postgres.Queue
	sched *invoke.Scheduler
	srv   *httptest.Server

	cancel   context.CancelFunc
	done     chan struct{}
	stopOnce sync.Once
}

func startReplica(t *testing.T, schema, name string, qopts *postgres.Options, iopts *invoke.Options, h http.Handler, p *invoke.Policy) *replica {
	t.Helper()
	r := &replica{name: name, q: openAt(t, schema, qopts), done: make(chan struct{})}
	var o invoke.Options
	if iopts != nil {
		o = *iopts
	}
	if o.Logger == nil {
		o.Logger = testLogger(t).With("replica", name)
	}
	s, err := invoke.New(r.q, &o)
	if err != nil {
		t.Fatal(err)
	}
	r.sched = s
	mux := http.NewServeMux()
	mux.Handle("POST /work/{n}", trigger.New(s, nil).Async("work", h, p))
	r.srv = httptest.NewServer(mux)
	t.Cleanup(r.srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		if err := s.Run(ctx); err != nil {
			t.Errorf("replica %s: Run: %v", name, err)
		}
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *replica) stop() {
	r.stopOnce.Do(func() {
		r.cancel()
		<-r.done
	})
}

// submit sends an async request for task n and returns its ID.
func (r *replica) submit(t *testing.T, n int) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/work/%d", r.srv.URL, n), strings.NewReader(fmt.Sprint(n)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(trigger.HeaderInvocationType, "Async")
	resp, err := r.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ ID string }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusAccepted || body.ID == "" {
		t.Fatalf("async request to %s: %s, %+v, %v", r.name, resp.Status, body, err)
	}
	return body.ID
}

// runs records which replica ran which task, and how often.
type runs struct {
	mu    sync.Mutex
	by    map[string][]string // task ID -> the replicas that ran it, in order
	total atomic.Int64
	more  chan struct{}
}

func newRuns() *runs { return &runs{by: map[string][]string{}, more: make(chan struct{}, 1)} }

func (rs *runs) record(id, replica string) {
	rs.mu.Lock()
	rs.by[id] = append(rs.by[id], replica)
	rs.mu.Unlock()
	rs.total.Add(1)
	select {
	case rs.more <- struct{}{}:
	default:
	}
}

// waitFor waits until cond holds, failing after limit.
func (rs *runs) waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond) // for conditions on the store
	defer tick.Stop()
	for !cond() {
		select {
		case <-rs.more:
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("%s: not within %s", what, limit)
		}
	}
}

// allDone reports whether every task in ids has reached status want.
func allDone(t *testing.T, q task.Store, ids []string, want task.Status) bool {
	for _, id := range ids {
		tk, err := task.Query(context.Background(), q, id)
		if err != nil {
			t.Fatal(err)
		}
		if tk.Status != want {
			return false
		}
	}
	return true
}

// Three replicas on one database, a burst of async requests to all of
// them: every task runs exactly once, wherever it was accepted, and its
// success record is delivered once, by one of the replicas.
func TestReplicasRunEachTaskOnce(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	rs := newRuns()
	delivered := newRuns()
	var replicas []*replica
	for _, name := range []string{"a", "b", "c"} {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a, _ := task.FromContext(r.Context())
			rs.record(a.ID, name)
			time.Sleep(time.Millisecond) // some work, so that all three get some
		})
		onSuccess := destination.Func(func(_ context.Context, rec destination.Record) error {
			delivered.record(rec.RequestContext.RequestID, name)
			return nil
		})
		replicas = append(replicas, startReplica(t, schema, name, nil, nil, h, &invoke.Policy{Concurrency: 8, OnSuccess: onSuccess}))
	}
	const n = 300
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { ids[i] = replicas[i%3].submit(t, i) })
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	rs.waitFor(t, "every task run", 60*time.Second, func() bool { return rs.total.Load() >= n })
	rs.waitFor(t, "every task Succeeded", 30*time.Second, func() bool { return allDone(t, replicas[0].q, ids, task.Succeeded) })
	delivered.waitFor(t, "every success delivered", 30*time.Second, func() bool { return delivered.total.Load() >= n })
	// Nothing runs twice: give a stray second run the time to show.
	time.Sleep(200 * time.Millisecond)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	per := map[string]int{}
	for _, id := range ids {
		if got := rs.by[id]; len(got) != 1 {
			t.Errorf("task %s ran %d times (%v), want once", id, len(got), got)
		} else {
			per[got[0]]++
		}
	}
	if len(rs.by) != n || rs.total.Load() != n {
		t.Errorf("%d runs of %d tasks, want %d of %d", rs.total.Load(), len(rs.by), n, n)
	}
	t.Logf("tasks run per replica: %v", per)
	delivered.mu.Lock()
	defer delivered.mu.Unlock()
	per = map[string]int{}
	for _, id := range ids {
		if got := delivered.by[id]; len(got) != 1 {
			t.Errorf("task %s delivered %d times (%v), want once", id, len(got), got)
		} else {
			per[got[0]]++
		}
	}
	t.Logf("records delivered per replica: %v", per)
	for _, r := range replicas {
		counts, err := task.Counts(context.Background(), r.q)
		if err != nil {
			t.Fatal(err)
		}
		if len(counts) != 1 || counts[0] != (task.Count{Target: "work", Status: task.Succeeded, N: n}) {
			t.Errorf("replica %s counts %+v, want %d work Succeeded", r.name, counts, n)
		}
	}
}

// A replica dies mid-run (its connections close, its heartbeat stops,
// nothing is finished): once its leases expire the other two run its
// tasks, counting the lost attempt, and run every other task once.
func TestReplicaCrash(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	const leaseTimeout = 2 * time.Second
	qopts := &postgres.Options{LeaseTimeout: leaseTimeout, HeartbeatInterval: 200 * time.Millisecond}
	rs := newRuns()
	var (
		mu        sync.Mutex
		onC       = map[string]bool{}
		cRunning  = make(chan struct{}, 100)
		crashedAt time.Time
		rerunAt   = map[string]time.Time{}
	)
	handler := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a, _ := task.FromContext(r.Context())
			rs.record(a.ID, name)
			if name == "c" {
				mu.Lock()
				onC[a.ID] = true
				mu.Unlock()
				cRunning <- struct{}{}
				<-r.Context().Done() // hangs until the dead replica's scheduler is torn down
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			mu.Lock()
			if onC[a.ID] {
				rerunAt[a.ID] = time.Now()
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		})
	}
	a := startReplica(t, schema, "a", qopts, nil, handler("a"), &invoke.Policy{Concurrency: 4})
	b := startReplica(t, schema, "b", qopts, nil, handler("b"), &invoke.Policy{Concurrency: 4})
	c := startReplica(t, schema, "c", qopts, &invoke.Options{ShutdownTimeout: 100 * time.Millisecond}, handler("c"), &invoke.Policy{Concurrency: 4})
	const n = 120
	ids := make([]string, n)
	for i := range n {
		ids[i] = []*replica{a, b, c}[i%3].submit(t, i)
	}
	// c holds some tasks (its handler never returns): kill it.
	select {
	case <-cRunning:
	case <-time.After(20 * time.Second):
		t.Fatal("replica c never started a task")
	}
	mu.Lock()
	crashedAt = time.Now()
	mu.Unlock()
	c.q.Crash()
	c.stop() // its attempts end now, but their Finish goes nowhere
	mu.Lock()
	lost := len(onC)
	mu.Unlock()
	t.Logf("replica c crashed while running %d tasks", lost)

	rs.waitFor(t, "every task Succeeded", 60*time.Second, func() bool { return allDone(t, a.q, ids, task.Succeeded) })
	rs.mu.Lock()
	defer rs.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		got := rs.by[id]
		tk, err := task.Query(context.Background(), b.q, id)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case onC[id]:
			// Run by c, lost, run again by a or b as attempt 2.
			if len(got) != 2 || got[0] != "c" || got[1] == "c" || tk.Attempts != 2 {
				t.Errorf("task %s lost with c: runs %v, attempts %d; want c then a or b, 2 attempts", id, got, tk.Attempts)
			}
			// Seconds, not minutes: the lease timeout and the reaper's
			// wake-up, with room for a loaded machine.
			if wait := rerunAt[id].Sub(crashedAt); wait > leaseTimeout+8*time.Second {
				t.Errorf("task %s ran again %s after the crash; lease timeout %s", id, wait, leaseTimeout)
			}
			if !hasEvent(tk, "process lost") {
				t.Errorf("task %s has no lost-attempt event: %+v", id, tk.Events)
			}
		default:
			if len(got) != 1 || got[0] == "c" || tk.Attempts != 1 {
				t.Errorf("task %s: runs %v, attempts %d; want one run by a or b", id, got, tk.Attempts)
			}
		}
	}
	if lost == 0 {
		t.Error("c crashed holding no task")
	}
}

func hasEvent(tk *task.Task, detail string) bool {
	for _, e := range tk.Events {
		if strings.Contains(e.Detail, detail) {
			return true
		}
	}
	return false
}

// task.Stop sent through one replica stops the attempt that another
// replica runs, through LISTEN/NOTIFY (the heartbeat, which would repeat
// the request, is made too slow to be what delivers it).
func TestStopAcrossReplicas(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	qopts := &postgres.Options{LeaseTimeout: time.Minute, HeartbeatInterval: 20 * time.Second}
	type started struct {
		id, replica string
	}
	starts := make(chan started, 4)
	causes := make(chan error, 4)
	handler := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a, _ := task.FromContext(r.Context())
			starts <- started{a.ID, name}
			<-r.Context().Done()
			causes <- context.Cause(r.Context())
		})
	}
	replicas := map[string]*replica{}
	for _, name := range []string{"a", "b"} {
		replicas[name] = startReplica(t, schema, name, qopts, nil, handler(name), nil)
	}
	for round := range 4 {
		id := replicas["a"].submit(t, round)
		var s started
		select {
		case s = <-starts:
		case <-time.After(10 * time.Second):
			t.Fatal("the task never started")
		}
		if s.id != id {
			t.Fatalf("started %s, want %s", s.id, id)
		}
		other := replicas["a"]
		if s.replica == "a" {
			other = replicas["b"]
		}
		at := time.Now()
		tk, err := task.Stop(context.Background(), other.q, id)
		// Stopped already when the attempt ended before Stop read it back.
		if err != nil || (tk.Status != task.Stopping && tk.Status != task.Stopped) {
			t.Fatalf("Stop through %s of a task running on %s: %+v, %v", other.name, s.replica, tk, err)
		}
		select {
		case cause := <-causes:
			if !errors.Is(cause, task.ErrStopped) {
				t.Errorf("handler cancelled with %v, want task.ErrStopped", cause)
			}
			if d := time.Since(at); d > 5*time.Second { // the heartbeat would take 20s
				t.Errorf("stop took %s to reach replica %s", d, s.replica)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("stop through %s never reached the attempt on %s", other.name, s.replica)
		}
		rsWait(t, func() bool { return allDone(t, other.q, []string{id}, task.Stopped) })
		t.Logf("round %d: ran on %s, stopped through %s", round, s.replica, other.name)
	}
}

func rsWait(t *testing.T, cond func() bool) {
	t.Helper()
	newRuns().waitFor(t, "condition", 10*time.Second, cond)
}
