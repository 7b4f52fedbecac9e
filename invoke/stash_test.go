package invoke_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// holdByID holds, after its commit, the first Lease whose result holds a
// task named in hold, until the test closes that task's release channel.
type holdByID struct {
	queue.Backend
	mu        sync.Mutex
	hold      map[string]bool
	committed map[string]chan struct{}
	release   map[string]chan struct{}
}

func newHoldByID(b queue.Backend) *holdByID {
	return &holdByID{Backend: b, hold: map[string]bool{}, committed: map[string]chan struct{}{}, release: map[string]chan struct{}{}}
}

// arm makes the next Lease that claims the task named id wait for release.
func (h *holdByID) arm(id string) (committed, release chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hold[id] = true
	h.committed[id], h.release[id] = make(chan struct{}), make(chan struct{})
	return h.committed[id], h.release[id]
}

func (h *holdByID) Lease(ctx context.Context, now time.Time, reqs []queue.LeaseRequest) (*queue.LeaseResult, error) {
	res, err := h.Backend.Lease(ctx, now, reqs)
	if err != nil {
		return res, err
	}
	for _, l := range res.Leases {
		h.mu.Lock()
		held := h.hold[l.ID]
		delete(h.hold, l.ID)
		c, r := h.committed[l.ID], h.release[l.ID]
		h.mu.Unlock()
		if held {
			close(c)
			<-r
		}
	}
	return res, err
}

// A stop request for a task whose Lease is still in flight is kept until
// that Lease returns, and then forgotten: while another Lease stays in
// flight, the same task stopped and retried must run its new attempt
// uncancelled.
func TestStopNoticeForgottenOnceUsed(t *testing.T) {
	q := openQueue(t)
	h := newHoldByID(q)
	finished := make(chan invoke.Event, 16)
	s, err := invoke.New(h, &invoke.Options{Logger: testLogger(t), Observer: func(e invoke.Event) {
		if e.Kind == invoke.EventFinished {
			finished <- e
		}
	}})
	if err != nil {
		t.Fatal(err)
	}

	zStarted, zRelease := make(chan struct{}), make(chan struct{})
	causes := make(chan error, 4)
	retryStarted, retryCheck := make(chan struct{}), make(chan struct{})
	err = s.Register("a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at, _ := task.FromContext(r.Context())
		switch {
		case at.ID == "job_z":
			close(zStarted)
			<-zRelease
		case at.Number == 1: // job_x, stopped while its Lease is held
			t.Error("job_x's first attempt, stopped before it started, entered its handler")
		default: // job_x retried: cancelled or not, by the time the test looks
			close(retryStarted)
			<-retryCheck
			causes <- context.Cause(r.Context())
		}
	}), &invoke.Policy{Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Register("b", http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), &invoke.Policy{Concurrency: 1}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	// Z keeps a's only slot while X waits and Y's Lease (target b) is held.
	if _, err := s.Enqueue(ctx, &queue.Job{ID: "job_z", Target: "a", Request: getRequest("/")}); err != nil {
		t.Fatal(err)
	}
	<-zStarted
	xCommitted, xRelease := h.arm("job_x")
	if _, err := s.Enqueue(ctx, &queue.Job{ID: "job_x", Target: "a", Request: getRequest("/")}); err != nil {
		t.Fatal(err)
	}
	yCommitted, yRelease := h.arm("job_y")
	if _, err := s.Enqueue(ctx, &queue.Job{ID: "job_y", Target: "b", Request: getRequest("/")}); err != nil {
		t.Fatal(err)
	}
	<-yCommitted // Lease L1 (Y) in flight
	close(zRelease)
	<-xCommitted // Lease L2 (X) in flight: leasing == 2

	// Stop X while its Lease is in flight: the notice is stashed.
	if _, err := q.StopTask(context.Background(), "job_x"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.StopTask(context.Background(), "no-such-task"); !errors.Is(err, task.ErrNotFound) {
		t.Fatalf("StopTask = %v", err) // a later commit: the stop notice was delivered
	}
	close(xRelease) // L2 returns: X ends stopped, unrun; L1 is still in flight
	for e := range finished {
		if e.TaskID == "job_x" {
			if e.Status != task.Stopped {
				t.Fatalf("X finished %s, want Stopped", e.Status)
			}
			break
		}
	}

	// Retry X while L1 is still in flight.
	if _, err := q.RetryTask(context.Background(), "job_x", "retried by the test"); err != nil {
		t.Fatal(err)
	}
	<-retryStarted
	// The scheduler starts an attempt and applies stop notices to it in one
	// critical section, which Admit waits for.
	if err := s.Admit(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	close(retryCheck)
	c := <-causes
	close(yRelease)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if c != nil {
		t.Errorf("the retried attempt of job_x was cancelled (cause %v) though no stop was asked", c)
	}
}

// An attempt that ends removes its own entry among the running attempts,
// never the entry of the task's next attempt: here attempt 1 answers 429
// with Retry-After: 0, attempt 2 starts before attempt 1's goroutine has
// finished (the Observer holds it), and a stop request afterwards must
// still reach attempt 2.
func TestEndedAttemptLeavesNextAttemptStoppable(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		retried, release := make(chan struct{}), make(chan struct{})
		b := setup(t, &invoke.Options{Observer: func(e invoke.Event) {
			if e.Kind == invoke.EventRetried {
				close(retried)
				<-release // attempt 1's goroutine, after its finish
			}
		}})
		second := make(chan struct{})
		causes := make(chan error, 1)
		b.register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if a, _ := task.FromContext(r.Context()); a.Number == 1 {
				w.Header().Set("Retry-After", "0")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			close(second)
			select {
			case <-r.Context().Done():
				causes <- context.Cause(r.Context())
			case <-time.After(time.Hour): // on the bubble's clock: nothing else was left to run
				causes <- nil
			}
		}), nil)
		b.start()
		id := b.enqueue(&queue.Job{Target: "work"})
		<-retried
		<-second
		close(release)
		synctest.Wait() // attempt 1's goroutine has ended
		if _, err := task.Stop(context.Background(), b.q, id); err != nil {
			t.Fatal(err)
		}
		if cause := <-causes; !errors.Is(cause, task.ErrStopped) {
			t.Errorf("attempt 2's context cause %v; want task.ErrStopped", cause)
		}
		synctest.Wait()
		b.wantStatus(id, task.Stopped, 2)
	})
}

// noticeTap lets a test send the scheduler notices as its queue would.
type noticeTap struct {
	queue.Backend
	mu  sync.Mutex
	fns []func(queue.Notice)
}

func (n *noticeTap) Subscribe(fn func(queue.Notice)) func() {
	n.mu.Lock()
	n.fns = append(n.fns, fn)
	n.mu.Unlock()
	return n.Backend.Subscribe(fn)
}

func (n *noticeTap) send(no queue.Notice) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, fn := range n.fns {
		fn(no)
	}
}

// A stop naming an attempt (one whose lease was lost, reported by a
// heartbeat) cancels that attempt only: the task's next attempt, running
// in the same process, goes on.
func TestStopOfAnotherAttemptLeavesTheRunningOne(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		tap := &noticeTap{Backend: openQueue(t)}
		g, id, stop := runGated(t, tap)
		defer stop()
		tap.send(queue.Notice{Kind: queue.StopRequested, ID: id, Attempt: 2})
		synctest.Wait()
		if len(g.causes) != 0 {
			t.Fatalf("a stop of attempt 2 cancelled attempt 1: %v", <-g.causes)
		}
		tap.send(queue.Notice{Kind: queue.StopRequested, ID: id, Attempt: 1})
		synctest.Wait()
		if len(g.causes) != 1 || <-g.causes != task.ErrStopped {
			t.Errorf("a stop of attempt 1 did not cancel it")
		}
	})
}

// releaser passes on Leases, adding to the next one the leases pushed to
// extra: a store that leased a task again after this process lost its
// lease.
type releaser struct {
	queue.Backend
	mu     sync.Mutex
	leased []*queue.Lease
	extra  chan *queue.Lease
}

func (r *releaser) Lease(ctx context.Context, now time.Time, reqs []queue.LeaseRequest) (*queue.LeaseResult, error) {
	res, err := r.Backend.Lease(ctx, now, reqs)
	if err != nil {
		return res, err
	}
	select {
	case l := <-r.extra:
		res.Leases = append(res.Leases, l)
	default:
	}
	r.mu.Lock()
	r.leased = append(r.leased, res.Leases...)
	r.mu.Unlock()
	return res, nil
}

// A task leased again while its earlier attempt still runs here (this
// process stalled past its lease): the earlier attempt is cancelled, its
// lease lost, and the new one runs; a stop naming the lost attempt,
// arriving later, leaves the new one alone.
func TestReLeasedTaskCancelsTheLostAttempt(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		rl := &releaser{Backend: openQueue(t), extra: make(chan *queue.Lease, 1)}
		tap := &noticeTap{Backend: rl}
		g, id, stop := runGated(t, tap)
		defer stop()
		rl.mu.Lock()
		again := *rl.leased[0]
		rl.mu.Unlock()
		again.Attempt = 2
		rl.extra <- &again
		if _, err := tap.Enqueue(context.Background(), &queue.Job{Target: "work", Request: getRequest("/")}); err != nil {
			t.Fatal(err) // its Lease brings attempt 2 along
		}
		synctest.Wait()
		if len(g.causes) != 1 || <-g.causes != task.ErrLeaseLost {
			t.Fatalf("attempt 1 was not cancelled as lost when attempt 2 of its task came")
		}
		tap.send(queue.Notice{Kind: queue.StopRequested, ID: id, Attempt: 1})
		synctest.Wait()
		if len(g.causes) != 0 {
			t.Errorf("a stop of the lost attempt 1 cancelled attempt 2: %v", <-g.causes)
		}
	})
}

// runGated runs a scheduler over b whose target "work" is a gate, enqueues
// a task and returns once its first attempt is in the handler; stop opens
// the gate and stops the scheduler.
func runGated(t *testing.T, b queue.Backend) (g *gate, id string, stop func()) {
	t.Helper()
	s, err := invoke.New(b, &invoke.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	g = newGate()
	if err := s.Register("work", g, nil); err != nil {
		t.Fatal(err)
	}
	stopRun := runScheduler(t, s)
	r, err := s.Enqueue(context.Background(), &queue.Job{Target: "work", Request: getRequest("/")})
	if err != nil {
		t.Fatal(err)
	}
	<-g.entered
	return g, r.ID, func() {
		close(g.release)
		stopRun()
	}
}
