package invoke_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/oklog/ulid/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

func TestSuccess(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		p := newProbe(func(w http.ResponseWriter, _ *http.Request, _ int) {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusCreated)
			fmt.Fprint(w, "made")
		})
		b.register("work", p, nil)
		b.start()
		id := b.enqueue(&queue.Job{Target: "work"})
		c := p.next(t, time.Hour)
		synctest.Wait()

		tk := b.wantStatus(id, task.Succeeded, 1)
		if c.attempt.Number != 1 || c.retryCount != "0" || c.cause != nil {
			t.Errorf("handler saw %+v", c)
		}
		if tk.LastError != "" || tk.FinishedAt.IsZero() || !tk.ReadyAt.IsZero() {
			t.Errorf("task %+v", tk)
		}
		r := tk.Response
		if r == nil || r.StatusCode != http.StatusCreated || string(r.Body) != "made" || r.BodySize != 4 || r.Header.Get("Content-Type") != "text/plain" {
			t.Errorf("recorded response %+v", r)
		}
		var statuses []task.Status
		for _, e := range tk.Events {
			statuses = append(statuses, e.Status)
		}
		if want := []task.Status{task.Enqueued, task.Running, task.Succeeded}; !slices.Equal(statuses, want) {
			t.Errorf("events %v; want %v", statuses, want)
		}
	})
}

// The scheduler sleeps until a delayed task is due, and starts it then,
// not before.
func TestDelayedTask(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		p := newProbe(answer(http.StatusOK))
		b.register("work", p, nil)
		b.start()
		start := time.Now()
		id := b.enqueue(&queue.Job{Target: "work", ReadyAt: start.Add(90 * time.Second)})
		c := p.next(t, time.Hour)
		if got := c.at.Sub(start); got != 90*time.Second {
			t.Errorf("delayed task started after %s; want 90s", got)
		}
		synctest.Wait()
		b.wantStatus(id, task.Succeeded, 1)
	})
}

func TestRunTwice(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		b.register("work", newProbe(answer(http.StatusOK)), nil)
		b.start()
		synctest.Wait() // Run has started
		if err := b.sched.Run(context.Background()); !errors.Is(err, invoke.ErrStarted) {
			t.Errorf("second Run while running: %v; want ErrStarted", err)
		}
		if err := b.stopRun(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if err := b.sched.Run(context.Background()); !errors.Is(err, invoke.ErrStarted) {
			t.Errorf("Run after the first returned: %v; want ErrStarted", err)
		}
	})
}

func TestRegisterAfterRun(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		b.register("work", newProbe(answer(http.StatusOK)), nil)
		b.start()
		synctest.Wait()
		err := b.sched.Register("late", newProbe(answer(http.StatusOK)), nil)
		if !errors.Is(err, invoke.ErrStarted) {
			t.Errorf("Register after Run: %v; want ErrStarted", err)
		}
	})
}

func TestRegisterErrors(t *testing.T) {
	t.Parallel()
	h := http.NotFoundHandler()
	tests := []struct {
		name   string
		target string
		h      http.Handler
		p      *invoke.Policy
	}{
		{"negative Concurrency", "a", h, &invoke.Policy{Concurrency: -1}},
		{"negative Timeout", "a", h, &invoke.Policy{Timeout: -time.Second}},
		{"negative MaxAge", "a", h, &invoke.Policy{MaxAge: -time.Second}},
		{"negative BackoffInitial", "a", h, &invoke.Policy{BackoffInitial: -time.Second}},
		{"negative BackoffMax", "a", h, &invoke.Policy{BackoffMax: -time.Second}},
		{"negative MaxQueued", "a", h, &invoke.Policy{MaxQueued: -1}},
		{"MaxRetries below NoRetries", "a", h, &invoke.Policy{MaxRetries: invoke.NoRetries - 1}},
		{"BackoffMax below BackoffInitial", "a", h, &invoke.Policy{BackoffInitial: time.Minute, BackoffMax: time.Second}},
		{"BackoffInitial above the default max", "a", h, &invoke.Policy{BackoffInitial: invoke.DefaultBackoffMax + time.Second}},
		{"nil handler", "a", nil, nil},
		{"empty name", "", h, nil},
		{"bad name", "no spaces", h, nil},
		{"name too long", strings.Repeat("a", 129), h, nil},
		{"taken name", "taken", h, nil},
	}
	q := openQueue(t)
	s, err := invoke.New(q, &invoke.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Register("taken", h, nil); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		if err := s.Register(tt.target, tt.h, tt.p); err == nil {
			t.Errorf("%s: Register succeeded", tt.name)
		}
	}
	// The failures registered nothing; good policies are accepted.
	for i, p := range []*invoke.Policy{nil, {}, {MaxRetries: invoke.NoRetries}, {BackoffInitial: time.Minute, BackoffMax: time.Minute}, {Timeout: time.Second, MaxAge: time.Hour, Concurrency: 1, MaxQueued: 5}} {
		if err := s.Register(fmt.Sprintf("ok-%d", i), h, p); err != nil {
			t.Errorf("Register with %+v: %v", p, err)
		}
	}
	if err := s.Register("a", h, nil); err != nil {
		t.Errorf("a failed Register kept the name: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	q := openQueue(t)
	for _, o := range []*invoke.Options{{ShutdownTimeout: -1}, {ResponseBodyCap: -1}} {
		if _, err := invoke.New(q, o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

func TestEnqueueErrors(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		b.register("bounded", newGate(), &invoke.Policy{MaxQueued: 2})
		ctx := context.Background()
		if _, err := b.sched.Enqueue(ctx, &queue.Job{Target: "nobody", Request: getRequest("/")}); !errors.Is(err, invoke.ErrUnknownTarget) {
			t.Errorf("Enqueue for an unknown target: %v; want ErrUnknownTarget", err)
		}
		b.enqueue(&queue.Job{Target: "bounded"})
		b.enqueue(&queue.Job{Target: "bounded"})
		if _, err := b.sched.Enqueue(ctx, &queue.Job{Target: "bounded", Request: getRequest("/")}); !errors.Is(err, task.ErrQueueFull) {
			t.Errorf("Enqueue past MaxQueued: %v; want task.ErrQueueFull", err)
		}
		if err := b.sched.Stop(ctx); err != nil {
			t.Errorf("Stop before Run: %v", err)
		}
		if _, err := b.sched.Enqueue(ctx, &queue.Job{Target: "bounded", Request: getRequest("/")}); !errors.Is(err, task.ErrClosed) {
			t.Errorf("Enqueue after Stop: %v; want task.ErrClosed", err)
		}
	})
}

// At Run, the waiting tasks of targets that are not registered become
// Invalid with a clear reason; the others are untouched.
func TestUnregisteredTargetInvalid(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		p := newProbe(answer(http.StatusOK))
		b.register("known", p, nil)
		ctx := context.Background()
		var ghosts []string
		for range 3 {
			// Straight into the queue: the scheduler refuses unknown targets.
			r, err := b.q.Enqueue(ctx, &queue.Job{Target: "ghost", Request: getRequest("/")})
			if err != nil {
				t.Fatal(err)
			}
			ghosts = append(ghosts, r.ID)
		}
		delayed, err := b.q.Enqueue(ctx, &queue.Job{Target: "ghost", Request: getRequest("/"), ReadyAt: time.Now().Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		ghosts = append(ghosts, delayed.ID)
		known := b.enqueue(&queue.Job{Target: "known"})
		b.start()
		synctest.Wait()
		for _, id := range ghosts {
			tk := b.wantStatus(id, task.Invalid, 0)
			if !strings.Contains(tk.LastError, `target "ghost" is not registered`) {
				t.Errorf("LastError %q", tk.LastError)
			}
		}
		b.wantStatus(known, task.Succeeded, 1)
	})
}

// A stored request that cannot be decoded makes its task Invalid without
// running the handler; the scheduler goes on with the others.
func TestCorruptRequestInvalid(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "offload.db")
		q, err := queue.Open(path, queueOptions(t))
		if err != nil {
			t.Fatal(err)
		}
		var bad, good queue.Receipt
		for _, r := range []*queue.Receipt{&bad, &good} {
			if *r, err = q.Enqueue(context.Background(), &queue.Job{Target: "work", Request: getRequest("/")}); err != nil {
				t.Fatal(err)
			}
		}
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		corruptRequest(t, path, bad.ID)

		q, err = queue.Open(path, queueOptions(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close() })
		b := newBundle(t, q, nil)
		p := newProbe(answer(http.StatusOK))
		b.register("work", p, nil)
		b.start()
		synctest.Wait()
		tk := b.wantStatus(bad.ID, task.Invalid, 1)
		if !strings.Contains(tk.LastError, "stored request cannot be decoded") {
			t.Errorf("LastError %q", tk.LastError)
		}
		b.wantStatus(good.ID, task.Succeeded, 1)
		if c := p.next(t, time.Hour); c.attempt.ID != good.ID || len(p.calls) != 0 {
			t.Errorf("handler ran for %s, and %d more", c.attempt.ID, len(p.calls))
		}
		if err := b.stopRun(); err != nil {
			t.Fatal(err)
		}
		// The checker sees the damage, and only it.
		err = q.Check()
		if err == nil || !strings.Contains(err.Error(), bad.ID) || strings.Count(err.Error(), "\n") != 0 {
			t.Errorf("Check: %v; want one problem, with %s", err, bad.ID)
		}
	})
}

// corruptRequest damages the stored request of task id in the closed
// database at path by appending a byte to its record, which the request
// decoder refuses as trailing data while the record's head stays valid.
// It knows the queue's layout: records are in bucket "tasks" under the
// ULID's 16 bytes.
// damagedFinish is a queue whose task records cannot be decoded when an
// attempt is recorded.
type damagedFinish struct {
	queue.Backend
	calls atomic.Int64
}

func (d *damagedFinish) Finish(ctx context.Context, l *queue.Lease, o queue.Outcome) (task.Status, error) {
	d.calls.Add(1)
	return "", fmt.Errorf("queue: finish %s: state: %w: unknown state record version 9", l.ID, reqcodec.ErrCorrupt)
}

// Recording an attempt whose task record is damaged is not tried again:
// the damage does not heal, and trying every few seconds held Stop for
// its whole ShutdownTimeout.
func TestFinishOfADamagedRecordNotRetried(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		q := &damagedFinish{Backend: testutil.OpenQueue(t, queueOptions(t))}
		s, err := invoke.New(q, &invoke.Options{Logger: testLogger(t), ShutdownTimeout: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Register("work", newProbe(answer(http.StatusOK)), nil); err != nil {
			t.Fatal(err)
		}
		ran := make(chan error, 1)
		go func() { ran <- s.Run(context.Background()) }()
		if _, err := s.Enqueue(context.Background(), &queue.Job{Target: "work", Request: getRequest("/")}); err != nil {
			t.Fatal(err)
		}
		advance(time.Minute)
		if n := q.calls.Load(); n != 1 {
			t.Errorf("Finish called %d times in a minute; want once", n)
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
		if waited := time.Since(start); waited != 0 {
			t.Errorf("Stop waited %s", waited)
		}
	})
}

func corruptRequest(t *testing.T, path, id string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("tasks"))
		if b == nil {
			return errors.New("no tasks bucket")
		}
		key, err := ulid.ParseStrict(id)
		if err != nil {
			return err
		}
		v := b.Get(key[:])
		if v == nil {
			return fmt.Errorf("no record for %s", id)
		}
		return b.Put(key[:], append(slices.Clone(v), 0xff))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A task stopped while it runs: its handler's context is cancelled with
// cause task.ErrStopped, and it ends Stopped with no retry. Stop takes a
// generated ID in either case, and finds the running attempt either way.
func TestStopRunningTask(t *testing.T) {
	t.Parallel()
	for _, spelling := range []struct {
		name string
		of   func(id string) string
	}{
		{"as given", func(id string) string { return id }},
		{"in lower case", strings.ToLower},
	} {
		t.Run(spelling.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				b := setup(t, nil)
				g := newGate()
				b.register("work", g, &invoke.Policy{MaxRetries: 5})
				b.start()
				id := b.enqueue(&queue.Job{Target: "work"})
				<-g.entered
				tk, err := task.Stop(context.Background(), b.q, spelling.of(id))
				if err != nil {
					t.Fatal(err)
				}
				// The handler may have returned before Stop reads the task back.
				if tk.Status != task.Stopping && tk.Status != task.Stopped {
					t.Errorf("Stop returned a %s task; want Stopping", tk.Status)
				}
				synctest.Wait()
				select {
				case cause := <-g.causes:
					if cause != task.ErrStopped {
						t.Errorf("handler's context cause %v; want task.ErrStopped", cause)
					}
				default:
					t.Fatalf("Stop(%q) did not cancel the running handler; the task is %s", spelling.of(id), b.task(id).Status)
				}
				synctest.Wait()
				tk = b.wantStatus(id, task.Stopped, 1)
				if !tk.ReadyAt.IsZero() || tk.FinishedAt.IsZero() {
					t.Errorf("stopped task has ReadyAt %s, FinishedAt %s", tk.ReadyAt, tk.FinishedAt)
				}
				if _, err := task.Stop(context.Background(), b.q, id); !errors.Is(err, task.ErrFinished) {
					t.Errorf("second Stop: %v; want task.ErrFinished", err)
				}
				if len(g.entered) != 0 {
					t.Errorf("the stopped task ran again")
				}
			})
		})
	}
}

// A waiting task that is stopped never runs.
func TestStopWaitingTask(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		p := newProbe(answer(http.StatusOK))
		b.register("work", p, nil)
		b.start()
		id := b.enqueue(&queue.Job{Target: "work", ReadyAt: time.Now().Add(time.Minute)})
		if _, err := task.Stop(context.Background(), b.q, id); err != nil {
			t.Fatal(err)
		}
		advance(time.Hour)
		b.wantStatus(id, task.Stopped, 0)
		if len(p.calls) != 0 {
			t.Error("the stopped task ran")
		}
	})
}

// Never more than Concurrency attempts of a target run at once, and the
// pool fills up to it; each target has its own pool.
func TestConcurrencyBound(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		bounds := map[string]int{"one": 1, "three": 3, "eight": 8}
		gates := map[string]*gate{}
		for name, n := range bounds {
			gates[name] = newGate()
			b.register(name, gates[name], &invoke.Policy{Concurrency: n})
		}
		b.start()
		const tasks = 20
		for name := range bounds {
			for range tasks {
				b.enqueue(&queue.Job{Target: name})
			}
		}
		for left := tasks; left > 0; left-- {
			synctest.Wait()
			for name, g := range gates {
				if in, want := g.in.Load(), int64(min(bounds[name], left)); in != want {
					t.Fatalf("%s: %d attempts running with %d tasks left; want %d", name, in, left, want)
				}
				g.release <- struct{}{}
			}
		}
		synctest.Wait()
		for name, g := range gates {
			if got := g.max.Load(); got != int64(bounds[name]) {
				t.Errorf("%s: at most %d at once; want %d", name, got, bounds[name])
			}
			if len(g.entered) != tasks {
				t.Errorf("%s: %d attempts; want %d", name, len(g.entered), tasks)
			}
		}
	})
}

// Stop with a short context cancels the attempts still running with cause
// task.ErrShutdown and hands them back: none is lost, none counted or
// failed, and a new scheduler on the same queue runs them all.
func TestShutdownHandsBackInFlight(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		g := newGate()
		b.register("work", g, &invoke.Policy{Concurrency: 4})
		b.start()
		var ids []string
		for range 6 {
			ids = append(ids, b.enqueue(&queue.Job{Target: "work"}))
		}
		synctest.Wait()
		if in := g.in.Load(); in != 4 {
			t.Fatalf("%d running; want 4", in)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		if err := b.sched.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Stop: %v; want context.DeadlineExceeded", err)
		}
		if took := time.Since(start); took != time.Second {
			t.Errorf("Stop took %s; want its context's 1s", took)
		}
		if err := b.stopRun(); err != nil {
			t.Errorf("Run: %v", err)
		}
		if len(g.causes) != 4 {
			t.Fatalf("%d attempts cancelled; want 4", len(g.causes))
		}
		for range 4 {
			if cause := <-g.causes; cause != task.ErrShutdown {
				t.Errorf("handler's context cause %v; want task.ErrShutdown", cause)
			}
		}
		for _, id := range ids {
			tk := b.wantStatus(id, task.Enqueued, 0)
			if tk.LastError != "" {
				t.Errorf("handed-back task has LastError %q", tk.LastError)
			}
		}

		next := newBundle(t, b.q, nil)
		p := newProbe(answer(http.StatusOK))
		next.register("work", p, nil)
		next.start()
		for range ids {
			c := p.next(t, time.Hour)
			if c.attempt.Number != 1 || c.retryCount != "0" {
				t.Errorf("run again as %+v; want attempt 1", c)
			}
		}
		synctest.Wait()
		for _, id := range ids {
			b.wantStatus(id, task.Succeeded, 1)
		}
	})
}

// Cancelling Run's context gives in-flight attempts ShutdownTimeout to
// finish; what finishes in time is recorded, the rest is handed back.
func TestShutdownTimeout(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, &invoke.Options{ShutdownTimeout: 10 * time.Second})
		p := newProbe(func(w http.ResponseWriter, r *http.Request, _ int) {
			wait := 5 * time.Second // finishes within the grace period
			if r.URL.Path == "/slow" {
				wait = time.Minute
			}
			select {
			case <-time.After(wait):
				fmt.Fprint(w, "done")
			case <-r.Context().Done():
			}
		})
		b.register("work", p, nil)
		b.start()
		quick := b.enqueue(&queue.Job{Target: "work", Request: getRequest("/quick")})
		slow := b.enqueue(&queue.Job{Target: "work", Request: getRequest("/slow")})
		synctest.Wait()
		start := time.Now()
		if err := b.stopRun(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if took := time.Since(start); took != 10*time.Second {
			t.Errorf("Run returned %s after its context ended; want ShutdownTimeout's 10s", took)
		}
		causes := map[string]error{}
		for range 2 {
			c := p.next(t, time.Hour)
			causes[c.attempt.ID] = c.cause
		}
		if causes[quick] != nil || causes[slow] != task.ErrShutdown {
			t.Errorf("context causes: quick %v, slow %v; want nil and task.ErrShutdown", causes[quick], causes[slow])
		}
		b.wantStatus(quick, task.Succeeded, 1)
		b.wantStatus(slow, task.Enqueued, 0)
	})
}

// Stop waits for in-flight attempts that finish before its context ends,
// and returns nil.
func TestStopWaitsForAttempts(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		g := newGate()
		b.register("work", g, nil)
		b.start()
		id := b.enqueue(&queue.Job{Target: "work"})
		<-g.entered
		stopped := make(chan error)
		go func() { stopped <- b.sched.Stop(context.Background()) }()
		synctest.Wait()
		select {
		case err := <-stopped:
			t.Fatalf("Stop returned %v with an attempt running", err)
		default:
		}
		// Claims nothing more while stopping.
		if _, err := b.sched.Enqueue(context.Background(), &queue.Job{Target: "work", Request: getRequest("/")}); !errors.Is(err, task.ErrClosed) {
			t.Errorf("Enqueue while stopping: %v; want task.ErrClosed", err)
		}
		g.release <- struct{}{}
		if err := <-stopped; err != nil {
			t.Errorf("Stop: %v", err)
		}
		b.wantStatus(id, task.Succeeded, 1)
		if err := b.sched.Stop(context.Background()); err != nil {
			t.Errorf("second Stop: %v", err)
		}
	})
}

// An Observer may call back into the scheduler: no event is sent with the
// scheduler's lock held (EventExpired was, and deadlocked every claim).
func TestObserverMayCallTheScheduler(t *testing.T) {
	t.Parallel()
	q := openQueue(t)
	var s *invoke.Scheduler
	admitted := make(chan error, 1)
	s, err := invoke.New(q, &invoke.Options{Logger: testLogger(t), Observer: func(e invoke.Event) {
		if e.Kind == invoke.EventExpired {
			admitted <- s.Admit(context.Background(), "t")
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	// Any wait for a lease passes a MaxAge of a nanosecond: the task
	// expires when it is first leased.
	if err := s.Register("t", newProbe(answer(http.StatusOK)), &invoke.Policy{MaxAge: time.Nanosecond}); err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- s.Run(context.Background()) }()
	if _, err := s.Enqueue(context.Background(), &queue.Job{Target: "t", Request: getRequest("/")}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-admitted:
		if err != nil {
			t.Errorf("Admit from the Observer: %v", err)
		}
	case <-time.After(time.Minute): // a guard, not a wait: the event comes at once
		t.Fatal("an Observer that calls Admit on EventExpired never returned")
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Error(err)
	}
	if err := <-ran; err != nil {
		t.Error(err)
	}
}

// A handler that panics when shutdown cancels it (http.ErrAbortHandler is
// the usual way) is handed back uncounted, as one that returns is.
func TestShutdownHandsBackAHandlerThatPanics(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		entered := make(chan struct{})
		b.register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			<-r.Context().Done()
			panic(http.ErrAbortHandler)
		}), &invoke.Policy{MaxRetries: invoke.NoRetries})
		b.start()
		id := b.enqueue(&queue.Job{Target: "work"})
		<-entered
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := b.sched.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Stop: %v; want context.DeadlineExceeded", err)
		}
		b.wantStatus(id, task.Enqueued, 0)
	})
}

// Stop's context, not Options.ShutdownTimeout, bounds how long Stop lets
// attempts finish.
func TestStopContextOutlastsShutdownTimeout(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, &invoke.Options{ShutdownTimeout: time.Second})
		entered := make(chan struct{})
		b.register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			select {
			case <-time.After(time.Minute): // a minute of work
			case <-r.Context().Done():
			}
		}), nil)
		b.start()
		id := b.enqueue(&queue.Job{Target: "work"})
		<-entered
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		start := time.Now()
		if err := b.sched.Stop(ctx); err != nil {
			t.Errorf("Stop: %v; want the attempt to finish in time", err)
		}
		if took := time.Since(start); took != time.Minute {
			t.Errorf("Stop took %s; want the attempt's minute", took)
		}
		b.wantStatus(id, task.Succeeded, 1)
	})
}
