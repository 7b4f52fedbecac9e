package invoke_test

// Tests of result delivery (package destination) through a real queue and
// scheduler. Helpers here are prefixed dst, so as to stay out of the way
// of the package's other test files.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/oklog/ulid/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// dstBundle is a real queue and a scheduler over it.
type dstBundle struct {
	t     *testing.T
	q     *queue.Queue
	sched *invoke.Scheduler

	cancel  context.CancelFunc
	runDone chan struct{}
}

// dstQueueOptions keeps retention out of the way: a purge tick would
// move a synctest bubble's clock on its own.
func dstQueueOptions(t testing.TB) *queue.Options {
	return &queue.Options{Logger: dstLogger(t), PurgeInterval: 365 * 24 * time.Hour}
}

func dstLogger(t testing.TB) *slog.Logger {
	if tt, ok := t.(interface{ Output() io.Writer }); ok {
		return slog.New(slog.NewTextHandler(tt.Output(), nil))
	}
	return slog.New(slog.DiscardHandler)
}

// dstSetup opens a queue in t.TempDir(), index-checked on cleanup, unless
// q is given, and a scheduler over it with small delivery backoffs unless
// opts says otherwise.
func dstSetup(t *testing.T, q *queue.Queue, opts *invoke.Options) *dstBundle {
	t.Helper()
	if q == nil {
		q = testutil.OpenQueue(t, dstQueueOptions(t))
	}
	var o invoke.Options
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = dstLogger(t)
	}
	if o.DeliveryBackoffInitial == 0 {
		o.DeliveryBackoffInitial = time.Second
	}
	if o.DeliveryBackoffMax == 0 {
		o.DeliveryBackoffMax = max(o.DeliveryBackoffInitial, 4*time.Second)
	}
	s, err := invoke.New(q, &o)
	if err != nil {
		t.Fatal(err)
	}
	return &dstBundle{t: t, q: q, sched: s}
}

func (b *dstBundle) register(name string, h http.Handler, p *invoke.Policy) {
	b.t.Helper()
	if err := b.sched.Register(name, h, p); err != nil {
		b.t.Fatalf("Register(%q): %v", name, err)
	}
}

// run starts the scheduler; it is stopped when the test ends, or by stop.
func (b *dstBundle) run() {
	b.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel, b.runDone = cancel, make(chan struct{})
	go func() {
		defer close(b.runDone)
		if err := b.sched.Run(ctx); err != nil {
			b.t.Errorf("Run: %v", err)
		}
	}()
	b.t.Cleanup(b.stop)
}

func (b *dstBundle) stop() {
	b.cancel()
	<-b.runDone
}

// enqueue stores a POST of body for target through the scheduler.
func (b *dstBundle) enqueue(target, body string, readyAt time.Time) string {
	b.t.Helper()
	r, err := b.sched.Enqueue(context.Background(), &queue.Job{Target: target, ReadyAt: readyAt, Request: dstRequest(body)})
	if err != nil {
		b.t.Fatalf("Enqueue: %v", err)
	}
	return r.ID
}

func dstRequest(body string) *reqcodec.Request {
	return &reqcodec.Request{
		Method: http.MethodPost, RequestURI: "/work", Proto: "HTTP/1.1", Host: "example.com",
		Body: []byte(body), BodySize: int64(len(body)),
	}
}

func (b *dstBundle) task(id string) *task.Task {
	b.t.Helper()
	tk, err := task.Query(context.Background(), b.q, id)
	if err != nil {
		b.t.Fatalf("Query(%s): %v", id, err)
	}
	return tk
}

// wantDeliveries checks the delivery history on a task.
func (b *dstBundle) wantDeliveries(id string, want ...task.Delivery) {
	b.t.Helper()
	got := b.task(id).Deliveries
	for i := range got {
		got[i].UpdatedAt = time.Time{}
	}
	if !slices.Equal(got, want) {
		b.t.Errorf("task %s deliveries:\n got %+v\nwant %+v", id, got, want)
	}
}

// dstSink is a destination that reports each record on recs; FailFunc, if
// set, decides the outcome of call n (1-based).
type dstSink struct {
	recs     chan destination.Record
	calls    atomic.Int64
	FailFunc func(ctx context.Context, n int) error
}

func newDstSink() *dstSink { return &dstSink{recs: make(chan destination.Record, 1000)} }

func (s *dstSink) Deliver(ctx context.Context, rec destination.Record) error {
	n := int(s.calls.Add(1))
	if s.FailFunc != nil {
		if err := s.FailFunc(ctx, n); err != nil {
			return err
		}
	}
	s.recs <- rec
	return nil
}

var _ destination.Destination = (*dstSink)(nil)

// next returns the next record, failing the test if none comes within
// limit (of fake time, in a bubble).
func (s *dstSink) next(t *testing.T, limit time.Duration) destination.Record {
	t.Helper()
	select {
	case r := <-s.recs:
		return r
	case <-time.After(limit):
		t.Fatalf("no record delivered within %s", limit)
		return destination.Record{}
	}
}

// none checks that nothing more was delivered.
func (s *dstSink) none(t *testing.T, name string) {
	t.Helper()
	select {
	case r := <-s.recs:
		t.Errorf("%s received a record it should not have: %+v", name, r.RequestContext)
	default:
	}
}

// dstAdvance moves a synctest bubble's fake clock on by d, running every
// timer due meanwhile, and waits for the bubble to settle. No real time
// passes: in a bubble, time.Sleep returns once every other goroutine is
// blocked, and then at once.
func dstAdvance(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

func dstRespond(code int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
}

// Each way a task ends produces the record of that condition, sent to
// onSuccess or onFailure as the condition says, and the task's record
// shows the delivery done.
func TestDestinationConditions(t *testing.T) {
	t.Parallel()
	type wantRec struct {
		dest     string
		cond     destination.Condition
		attempts int
		code     int
		payload  string
		errText  string // in FunctionError
	}
	tests := []struct {
		name    string
		handler http.Handler
		policy  invoke.Policy
		readyIn time.Duration
		// act runs after the enqueue, before the record is awaited.
		act  func(b *dstBundle, id string)
		want wantRec
	}{
		{
			name: "Success", handler: dstRespond(http.StatusCreated, "made"),
			want: wantRec{dest: task.OnSuccess, cond: destination.Success, attempts: 1, code: 201, payload: "made"},
		},
		{
			name: "RetriesExhausted", handler: dstRespond(http.StatusInternalServerError, "boom"),
			policy: invoke.Policy{MaxRetries: 2},
			want: wantRec{dest: task.OnFailure, cond: destination.RetriesExhausted, attempts: 3, code: 500, payload: "boom",
				errText: "retries exhausted: 2"},
		},
		{
			name: "NonRetryableError", handler: dstRespond(http.StatusUnprocessableEntity, "bad input"),
			want: wantRec{dest: task.OnFailure, cond: destination.NonRetryableError, attempts: 1, code: 422, payload: "bad input",
				errText: "422"},
		},
		{
			// The condition follows the target's Classify, not the status
			// code's usual meaning: a 404 retried until the budget ran out,
			// a 500 failed at once.
			name: "RetriesExhausted by a custom Classify", handler: dstRespond(http.StatusNotFound, "not yet"),
			policy: invoke.Policy{MaxRetries: 1, Classify: func(code int) invoke.Verdict {
				return map[bool]invoke.Verdict{true: invoke.Retry, false: invoke.DefaultClassify(code)}[code == http.StatusNotFound]
			}},
			want: wantRec{dest: task.OnFailure, cond: destination.RetriesExhausted, attempts: 2, code: 404, payload: "not yet",
				errText: "retries exhausted: 1"},
		},
		{
			name: "NonRetryableError by a custom Classify", handler: dstRespond(http.StatusInternalServerError, "corrupt input"),
			policy: invoke.Policy{Classify: func(code int) invoke.Verdict {
				return map[bool]invoke.Verdict{true: invoke.Fail, false: invoke.DefaultClassify(code)}[code == http.StatusInternalServerError]
			}},
			want: wantRec{dest: task.OnFailure, cond: destination.NonRetryableError, attempts: 1, code: 500, payload: "corrupt input",
				errText: "500"},
		},
		{
			name: "EventAgeExceeded after an attempt", handler: dstRespond(http.StatusBadGateway, "later"),
			policy: invoke.Policy{MaxAge: time.Minute, BackoffInitial: 10 * time.Minute, BackoffMax: 10 * time.Minute},
			want: wantRec{dest: task.OnFailure, cond: destination.EventAgeExceeded, attempts: 1, code: 502, payload: "later",
				errText: "MaxAge"},
		},
		{
			name: "EventAgeExceeded before any attempt", handler: dstRespond(http.StatusOK, ""),
			policy: invoke.Policy{MaxAge: time.Minute}, readyIn: time.Hour,
			want: wantRec{dest: task.OnFailure, cond: destination.EventAgeExceeded, attempts: 0, errText: "not run within MaxAge"},
		},
		{
			name: "Stopped while queued", handler: dstRespond(http.StatusOK, ""), readyIn: time.Hour,
			act: func(b *dstBundle, id string) {
				if _, err := task.Stop(context.Background(), b.q, id); err != nil {
					b.t.Fatal(err)
				}
			},
			want: wantRec{dest: task.OnFailure, cond: destination.Stopped, attempts: 0},
		},
		{
			name: "Stopped while running",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				<-r.Context().Done()
				w.WriteHeader(http.StatusServiceUnavailable)
			}),
			act: func(b *dstBundle, id string) {
				synctest.Wait() // the attempt is running
				if _, err := task.Stop(context.Background(), b.q, id); err != nil {
					b.t.Fatal(err)
				}
			},
			want: wantRec{dest: task.OnFailure, cond: destination.Stopped, attempts: 1, code: 503, errText: "stopped on request"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				b := dstSetup(t, nil, nil)
				onSuccess, onFailure := newDstSink(), newDstSink()
				p := tt.policy
				p.BackoffInitial = dstOr(p.BackoffInitial, time.Second)
				p.BackoffMax = dstOr(p.BackoffMax, time.Second)
				p.OnSuccess, p.OnFailure = onSuccess, onFailure
				b.register("work", tt.handler, &p)
				b.run()
				var readyAt time.Time
				if tt.readyIn > 0 {
					readyAt = time.Now().Add(tt.readyIn)
				}
				id := b.enqueue("work", `{"in":"a.mp4"}`, readyAt)
				if tt.act != nil {
					tt.act(b, id)
				}
				sink, other := onSuccess, onFailure
				if tt.want.dest == task.OnFailure {
					sink, other = onFailure, onSuccess
				}
				rec := sink.next(t, 2*time.Hour)
				synctest.Wait()
				other.none(t, "the other destination")
				sink.none(t, tt.want.dest+" (a second time)")

				tk := b.task(id)
				w := tt.want
				rc := rec.RequestContext
				if rec.Version != destination.Version || rc.RequestID != id || rc.FunctionArn != "work" || rc.Condition != w.cond ||
					rc.ApproximateInvokeCount != w.attempts {
					t.Errorf("record %+v %+v; want %s for task %s of work after %d attempts", rec.Version, rc, w.cond, id, w.attempts)
				}
				if !rec.Timestamp.Equal(tk.FinishedAt) || tk.FinishedAt.IsZero() {
					t.Errorf("record timestamp %s; want the task's finish, %s", rec.Timestamp, tk.FinishedAt)
				}
				if rec.RequestPayload != `{"in":"a.mp4"}` || rec.RequestPayloadEncoding != "" {
					t.Errorf("request payload %q (%q)", rec.RequestPayload, rec.RequestPayloadEncoding)
				}
				if rec.ResponseContext.StatusCode != w.code || rec.ResponsePayload != w.payload {
					t.Errorf("response %d %q; want %d %q", rec.ResponseContext.StatusCode, rec.ResponsePayload, w.code, w.payload)
				}
				fe := rec.ResponseContext.FunctionError
				if w.cond == destination.Success && fe != "" {
					t.Errorf("FunctionError %q on success", fe)
				}
				if w.cond != destination.Success && (fe != tk.LastError || !strings.Contains(fe, w.errText)) {
					t.Errorf("FunctionError %q; want the task's last error %q, containing %q", fe, tk.LastError, w.errText)
				}
				b.wantDeliveries(id, task.Delivery{Destination: w.dest, Status: task.DeliveryDelivered, Tries: 1})
			})
		})
	}
}

func dstOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// A task whose stored request cannot be decoded ends Invalid, and its
// record goes to onFailure.
func TestDestinationInvalidCorrupt(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		// Enqueued inside the bubble, so on its clock.
		path := filepath.Join(t.TempDir(), "offload.db")
		q, err := queue.Open(path, dstQueueOptions(t))
		if err != nil {
			t.Fatal(err)
		}
		r, err := q.Enqueue(context.Background(), &queue.Job{Target: "work", Request: dstRequest("lost")})
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		dstCorrupt(t, path, r.ID)

		// Opened by hand: the index checker would rightly see the damage.
		q, err = queue.Open(path, dstQueueOptions(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close() })
		b := dstSetup(t, q, nil)
		onSuccess, onFailure := newDstSink(), newDstSink()
		b.register("work", dstRespond(http.StatusOK, ""), &invoke.Policy{OnSuccess: onSuccess, OnFailure: onFailure})
		b.run()
		rec := onFailure.next(t, time.Hour)
		synctest.Wait()
		onSuccess.none(t, "onSuccess")
		rc := rec.RequestContext
		if rc.RequestID != r.ID || rc.Condition != destination.Invalid || rc.ApproximateInvokeCount != 1 ||
			!strings.Contains(rec.ResponseContext.FunctionError, "cannot be decoded") {
			t.Errorf("record %+v %+v; want Invalid for %s with the decode error", rc, rec.ResponseContext, r.ID)
		}
		if rec.RequestPayload != "" {
			t.Errorf("request payload %q of an undecodable request", rec.RequestPayload)
		}
		b.wantDeliveries(r.ID, task.Delivery{Destination: task.OnFailure, Status: task.DeliveryDelivered, Tries: 1})
	})
}

// A task of a target that no scheduler registers ends Invalid when Run
// starts. No policy names a destination for it, so nothing is delivered:
// the destinations of other targets do not see it.
func TestDestinationInvalidUnregistered(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		q := testutil.OpenQueue(t, dstQueueOptions(t))
		r, err := q.Enqueue(context.Background(), &queue.Job{Target: "gone", Request: dstRequest("orphan")})
		if err != nil {
			t.Fatal(err)
		}
		b := dstSetup(t, q, nil)
		onSuccess, onFailure := newDstSink(), newDstSink()
		b.register("work", dstRespond(http.StatusOK, ""), &invoke.Policy{OnSuccess: onSuccess, OnFailure: onFailure})
		b.run()
		dstAdvance(time.Hour)
		synctest.Wait()
		if tk := b.task(r.ID); tk.Status != task.Invalid || len(tk.Deliveries) != 0 {
			t.Errorf("task of an unregistered target: %s with deliveries %+v; want Invalid with none", tk.Status, tk.Deliveries)
		}
		onSuccess.none(t, "onSuccess")
		onFailure.none(t, "onFailure")
		if due, _, err := q.PendingDeliveries(context.Background(), time.Now().Add(24*time.Hour), 10, func(string) bool { return false }); err != nil || len(due) != 0 {
			t.Errorf("outbox holds %d deliveries (%v); want none", len(due), err)
		}
	})
}

// A destination down for a while is tried again with backoff, and gets
// the record once it is back; the task shows each try.
func TestDestinationRetriedUntilDelivered(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const initial, maxDelay = 10 * time.Second, 40 * time.Second
		b := dstSetup(t, nil, &invoke.Options{DeliveryBackoffInitial: initial, DeliveryBackoffMax: maxDelay, DeliveryTries: 5})
		sink := newDstSink()
		var calls []time.Time
		var checkPending func()
		sink.FailFunc = func(ctx context.Context, n int) error {
			calls = append(calls, time.Now())
			if n == 2 {
				checkPending()
			}
			if n <= 3 {
				return fmt.Errorf("down for try %d", n)
			}
			return nil
		}
		b.register("work", dstRespond(http.StatusOK, "ok"), &invoke.Policy{OnSuccess: sink})
		b.run()
		id := b.enqueue("work", "x", time.Time{})
		checkPending = func() {
			// Between tries the task says where the delivery stands.
			b.wantDeliveries(id, task.Delivery{Destination: task.OnSuccess, Status: task.DeliveryPending, Tries: 1, LastError: "down for try 1"})
		}
		rec := sink.next(t, time.Hour)
		synctest.Wait()
		if rec.RequestContext.RequestID != id {
			t.Errorf("record of %s; want %s", rec.RequestContext.RequestID, id)
		}
		if len(calls) != 4 {
			t.Fatalf("destination called %d times; want 4", len(calls))
		}
		// Exponential from initial, capped, with ±50% jitter.
		for i := 1; i < len(calls); i++ {
			base := min(initial<<(i-1), maxDelay)
			if gap := calls[i].Sub(calls[i-1]); gap < base/2 || gap > base*3/2 {
				t.Errorf("wait before try %d is %s; want within [%s, %s]", i+1, gap, base/2, base*3/2)
			}
		}
		b.wantDeliveries(id, task.Delivery{Destination: task.OnSuccess, Status: task.DeliveryDelivered, Tries: 4})
		sink.none(t, "the destination (again)")
	})
}

// A destination that never recovers ends failed, with its last error on
// the task, after DeliveryTries; another target's destination is not
// delayed meanwhile, and the task itself stays Succeeded.
func TestDestinationNeverRecovers(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := dstSetup(t, nil, &invoke.Options{DeliveryTries: 3, DeliveryBackoffInitial: time.Minute, DeliveryBackoffMax: time.Minute})
		dead, alive := newDstSink(), newDstSink()
		dead.FailFunc = func(ctx context.Context, n int) error { return fmt.Errorf("dead, try %d", n) }
		b.register("a", dstRespond(http.StatusOK, ""), &invoke.Policy{OnSuccess: dead})
		b.register("b", dstRespond(http.StatusOK, ""), &invoke.Policy{OnSuccess: alive})
		b.run()
		start := time.Now()
		idA := b.enqueue("a", "", time.Time{})
		synctest.Wait()
		idB := b.enqueue("b", "", time.Time{})
		rec := alive.next(t, time.Hour)
		if rec.RequestContext.RequestID != idB || time.Since(start) != 0 {
			t.Errorf("b's record (%s) came after %s; want at once", rec.RequestContext.RequestID, time.Since(start))
		}
		dstAdvance(time.Hour)
		if n := dead.calls.Load(); n != 3 {
			t.Errorf("dead destination called %d times; want DeliveryTries, 3", n)
		}
		b.wantDeliveries(idA, task.Delivery{Destination: task.OnSuccess, Status: task.DeliveryFailed, Tries: 3, LastError: "dead, try 3"})
		b.wantDeliveries(idB, task.Delivery{Destination: task.OnSuccess, Status: task.DeliveryDelivered, Tries: 1})
		if st := b.task(idA).Status; st != task.Succeeded {
			t.Errorf("task a is %s; a failed delivery does not change it", st)
		}
	})
}

// A destination that hangs holds at most DeliveryConcurrency deliveries;
// its target's tasks still run, and another target's records still go
// out, even with many of the hung destination's records due before them.
func TestDestinationSlowDoesNotBlock(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const n, conc = 150, 2
		b := dstSetup(t, nil, &invoke.Options{DeliveryConcurrency: conc, ShutdownTimeout: time.Second})
		var in, most atomic.Int64
		slow := newDstSink()
		slow.FailFunc = func(ctx context.Context, _ int) error {
			k := in.Add(1)
			defer in.Add(-1)
			for m := most.Load(); k > m && !most.CompareAndSwap(m, k); m = most.Load() {
			}
			<-ctx.Done()
			return context.Cause(ctx)
		}
		fast := newDstSink()
		var ran atomic.Int64
		b.register("slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { ran.Add(1) }), &invoke.Policy{OnSuccess: slow})
		b.register("fast", dstRespond(http.StatusOK, ""), &invoke.Policy{OnSuccess: fast})
		b.run()
		for range n {
			b.enqueue("slow", "", time.Time{})
		}
		synctest.Wait()
		if got := ran.Load(); got != n {
			t.Fatalf("%d of %d tasks ran while their destination hangs", got, n)
		}
		// A fake second later, so that the fast target's delivery is due
		// after all of the slow one's.
		dstAdvance(time.Second)
		id := b.enqueue("fast", "", time.Time{})
		if rec := fast.next(t, time.Hour); rec.RequestContext.RequestID != id {
			t.Errorf("record of %s; want %s", rec.RequestContext.RequestID, id)
		}
		if m := most.Load(); m != conc {
			t.Errorf("hung destination held %d deliveries at once; want DeliveryConcurrency, %d", m, conc)
		}
	})
}

// destination.Permanent stops the tries at once.
func TestDestinationPermanent(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := dstSetup(t, nil, &invoke.Options{DeliveryTries: 10})
		sink := newDstSink()
		sink.FailFunc = func(ctx context.Context, n int) error { return destination.Permanent(errors.New("rejected")) }
		b.register("work", dstRespond(http.StatusBadRequest, ""), &invoke.Policy{OnFailure: sink})
		b.run()
		id := b.enqueue("work", "", time.Time{})
		dstAdvance(24 * time.Hour)
		if n := sink.calls.Load(); n != 1 {
			t.Errorf("destination called %d times after a permanent error; want 1", n)
		}
		b.wantDeliveries(id, task.Delivery{Destination: task.OnFailure, Status: task.DeliveryFailed, Tries: 1, LastError: "permanent: rejected"})
	})
}

// A receiver's RetryAfter lengthens the wait before the next try up to
// DeliveryBackoffMax (one beyond it, or one that would overflow, waits
// that long), and never shortens the backoff: a "Retry-After: 0" on every
// answer would spend all the tries at once.
func TestDestinationRetryAfter(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const initial, backoffMax = time.Minute, 3 * time.Hour
		b := dstSetup(t, nil, &invoke.Options{DeliveryBackoffInitial: initial, DeliveryBackoffMax: backoffMax, DeliveryTries: 5})
		waits := []time.Duration{2 * time.Hour, math.MaxInt64, 0}
		sink := newDstSink()
		var calls []time.Time
		sink.FailFunc = func(ctx context.Context, n int) error {
			calls = append(calls, time.Now())
			if n <= len(waits) {
				return destination.RetryAfter(fmt.Errorf("busy, try %d", n), waits[n-1])
			}
			return nil
		}
		b.register("work", dstRespond(http.StatusOK, ""), &invoke.Policy{OnSuccess: sink})
		b.run()
		id := b.enqueue("work", "", time.Time{})
		dstAdvance(6 * time.Hour)
		if len(calls) != 4 {
			t.Fatalf("destination called %d times in 6h; want 4", len(calls))
		}
		for i, want := range []time.Duration{2 * time.Hour, backoffMax} {
			if gap := calls[i+1].Sub(calls[i]); gap != want {
				t.Errorf("wait before try %d is %s; want %s", i+2, gap, want)
			}
		}
		// The third try's backoff, initial<<2 with ±50% jitter, not 0.
		if gap, base := calls[3].Sub(calls[2]), initial<<2; gap < base/2 || gap > base*3/2 {
			t.Errorf("wait before try 4, after a Retry-After of 0, is %s; want the backoff, within [%s, %s]", gap, base/2, base*3/2)
		}
		b.wantDeliveries(id, task.Delivery{Destination: task.OnSuccess, Status: task.DeliveryDelivered, Tries: 4})
	})
}

// A Target destination chains two handlers: the first's record is the
// second's request body, and the follow-up task has a status and
// destinations of its own.
func TestDestinationTargetChain(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := dstSetup(t, nil, nil)
		type followUp struct {
			id        string
			rec       destination.Record
			reqID     string
			condition string
			body      string
		}
		got := make(chan followUp, 10)
		second := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			f := followUp{id: r.Header.Get(invoke.HeaderRequestID), reqID: r.Header.Get(destination.HeaderRequestID),
				condition: r.Header.Get(destination.HeaderCondition), body: string(body)}
			if err := json.Unmarshal(body, &f.rec); err != nil {
				t.Errorf("follow-up body is not a record: %v: %s", err, body)
			}
			got <- f
			_, _ = io.WriteString(w, "handled "+f.rec.RequestContext.RequestID)
		})
		end := newDstSink()
		b.register("ok", dstRespond(http.StatusOK, "first done"), &invoke.Policy{OnSuccess: destination.Target(b.sched, "second")})
		b.register("bad", dstRespond(http.StatusForbidden, "no"), &invoke.Policy{OnFailure: destination.Target(b.sched, "second")})
		b.register("second", second, &invoke.Policy{OnSuccess: end})
		b.run()

		for _, tc := range []struct {
			target  string
			cond    destination.Condition
			dest    string
			payload string
		}{
			{"ok", destination.Success, task.OnSuccess, "first done"},
			{"bad", destination.NonRetryableError, task.OnFailure, "no"},
		} {
			id := b.enqueue(tc.target, `{"job":1}`, time.Time{})
			var f followUp
			select {
			case f = <-got:
			case <-time.After(time.Hour):
				t.Fatalf("%s: the follow-up handler never ran", tc.target)
			}
			rc := f.rec.RequestContext
			if rc.RequestID != id || rc.FunctionArn != tc.target || rc.Condition != tc.cond ||
				f.rec.RequestPayload != `{"job":1}` || f.rec.ResponsePayload != tc.payload {
				t.Errorf("%s: follow-up got %+v", tc.target, f.rec)
			}
			if f.reqID != id || f.condition != string(tc.cond) {
				t.Errorf("%s: follow-up headers name %s %s; want %s %s", tc.target, f.reqID, f.condition, id, tc.cond)
			}
			// The follow-up's own record closes the chain.
			last := end.next(t, time.Hour)
			synctest.Wait()
			if last.RequestContext.RequestID != f.id || last.RequestContext.FunctionArn != "second" ||
				last.RequestPayload != f.body || last.ResponsePayload != "handled "+id {
				t.Errorf("%s: follow-up's own record %+v", tc.target, last)
			}
			if st := b.task(f.id).Status; st != task.Succeeded {
				t.Errorf("%s: follow-up task is %s", tc.target, st)
			}
			b.wantDeliveries(id, task.Delivery{Destination: tc.dest, Status: task.DeliveryDelivered, Tries: 1})
			b.wantDeliveries(f.id, task.Delivery{Destination: task.OnSuccess, Status: task.DeliveryDelivered, Tries: 1})
		}
	})
}

// A delivery cut short by shutdown stays in the outbox, its try not
// counted, and the next scheduler over the same queue delivers it.
func TestDestinationSurvivesShutdown(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		q := testutil.OpenQueue(t, dstQueueOptions(t))
		b := dstSetup(t, q, &invoke.Options{ShutdownTimeout: time.Second})
		entered := make(chan struct{}, 1)
		hang := newDstSink()
		hang.FailFunc = func(ctx context.Context, _ int) error {
			entered <- struct{}{}
			<-ctx.Done()
			return context.Cause(ctx)
		}
		b.register("work", dstRespond(http.StatusOK, ""), &invoke.Policy{OnSuccess: hang})
		b.run()
		id := b.enqueue("work", "", time.Time{})
		<-entered
		b.stop()
		b.wantDeliveries(id, task.Delivery{Destination: task.OnSuccess, Status: task.DeliveryPending})

		b2 := dstSetup(t, q, nil)
		sink := newDstSink()
		b2.register("work", dstRespond(http.StatusOK, ""), &invoke.Policy{OnSuccess: sink})
		b2.run()
		if rec := sink.next(t, time.Hour); rec.RequestContext.RequestID != id {
			t.Errorf("record of %s; want %s", rec.RequestContext.RequestID, id)
		}
		synctest.Wait()
		b2.wantDeliveries(id, task.Delivery{Destination: task.OnSuccess, Status: task.DeliveryDelivered, Tries: 1})
	})
}

// Deliveries owed to a destination that the next run no longer
// configures fail at once, saying so.
func TestDestinationRemoved(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		q := testutil.OpenQueue(t, dstQueueOptions(t))
		b := dstSetup(t, q, &invoke.Options{ShutdownTimeout: time.Second})
		entered := make(chan struct{}, 1)
		hang := newDstSink()
		hang.FailFunc = func(ctx context.Context, _ int) error {
			entered <- struct{}{}
			<-ctx.Done()
			return context.Cause(ctx)
		}
		b.register("work", dstRespond(http.StatusOK, ""), &invoke.Policy{OnSuccess: hang})
		b.run()
		id := b.enqueue("work", "", time.Time{})
		<-entered
		b.stop()

		b2 := dstSetup(t, q, nil)
		b2.register("work", dstRespond(http.StatusOK, ""), nil)
		b2.run()
		synctest.Wait()
		b2.wantDeliveries(id, task.Delivery{Destination: task.OnSuccess, Status: task.DeliveryFailed, Tries: 1,
			LastError: `target "work" has no onSuccess destination any more`})
	})
}

func TestDestinationSubmit(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := dstSetup(t, nil, nil)
		type seen struct {
			id, method, uri, ct, body string
		}
		got := make(chan seen, 10)
		b.register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			got <- seen{r.Header.Get(invoke.HeaderRequestID), r.Method, r.RequestURI, r.Header.Get("Content-Type"), string(body)}
		}), nil)
		b.run()
		submit := func(target, key, body string) (string, error) {
			r, _ := http.NewRequest(http.MethodPut, "/items/7?x=1", strings.NewReader(body))
			r.Header.Set("Content-Type", "text/plain")
			if key != "" {
				r.Header.Set("Idempotency-Key", key)
			}
			return b.sched.Submit(context.Background(), target, r)
		}
		id, err := submit("work", "k1", "payload")
		if err != nil {
			t.Fatal(err)
		}
		s := <-got
		if s != (seen{id, http.MethodPut, "/items/7?x=1", "text/plain", "payload"}) {
			t.Errorf("replay of a submitted request: %+v", s)
		}
		if again, err := submit("work", "k1", "payload"); err != nil || again != id {
			t.Errorf("Submit with the same Idempotency-Key = %s, %v; want %s", again, err, id)
		}
		if _, err := submit("work", "k1", "other"); !errors.Is(err, task.ErrIdempotencyMismatch) || !destination.IsPermanent(err) {
			t.Errorf("Submit reusing a key with another body = %v; want ErrIdempotencyMismatch, permanent", err)
		}
		if other, err := submit("work", "", "payload"); err != nil || other == id {
			t.Errorf("Submit without a key = %s, %v; want a new task", other, err)
		}
		if _, err := submit("nope", "", ""); !errors.Is(err, invoke.ErrUnknownTarget) || !destination.IsPermanent(err) {
			t.Errorf("Submit to an unknown target = %v; want ErrUnknownTarget, permanent", err)
		}
		if _, err := submit("work", strings.Repeat("k", queue.MaxIdempotencyKeyLen+1), ""); !errors.Is(err, task.ErrInvalidID) || !destination.IsPermanent(err) {
			t.Errorf("Submit with an overlong Idempotency-Key = %v; want ErrInvalidID, permanent", err)
		}
		r, _ := http.NewRequest(http.MethodPost, "/", io.LimitReader(dstZeros{}, invoke.MaxSubmitBody+1))
		if _, err := b.sched.Submit(context.Background(), "work", r); !destination.IsPermanent(err) {
			t.Errorf("Submit of a body over MaxSubmitBody = %v; want a permanent error", err)
		}
		synctest.Wait()
	})
}

type dstZeros struct{}

func (dstZeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// dstCorrupt damages the stored request of task id in the closed
// database at path: a byte appended to its record is trailing data to
// the request decoder, while the record's head stays valid.
// It knows the queue's layout: records are in bucket "tasks" under the
// ULID's 16 bytes.
func dstCorrupt(t *testing.T, path, id string) {
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

// holdGet holds the first GetTask made after arm until release closes:
// the deliverer's read of a task it is about to deliver for.
type holdGet struct {
	queue.Backend
	armed         atomic.Bool
	held, release chan struct{}
}

func (h *holdGet) GetTask(ctx context.Context, id string) (*task.Task, error) {
	if h.armed.CompareAndSwap(true, false) {
		close(h.held)
		<-h.release
	}
	return h.Backend.GetTask(ctx, id)
}

// A delivery already read from the outbox when its task is retried, and
// fails again, is not sent with the later finish's record: the
// destination gets that one once, by the later finish's own delivery.
func TestDestinationReadBeforeRetry(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		q := testutil.OpenQueue(t, dstQueueOptions(t))
		h := &holdGet{Backend: q, held: make(chan struct{}), release: make(chan struct{})}
		s, err := invoke.New(h, &invoke.Options{Logger: dstLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		onFailure := newDstSink()
		err = s.Register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadRequest) // fails at once
		}), &invoke.Policy{OnFailure: onFailure})
		if err != nil {
			t.Fatal(err)
		}
		defer runScheduler(t, s)()
		released := false
		defer func() {
			if !released {
				close(h.release)
			}
		}()
		h.armed.Store(true)
		r, err := s.Enqueue(context.Background(), &queue.Job{Target: "work", Request: dstRequest("x")})
		if err != nil {
			t.Fatal(err)
		}
		<-h.held                // attempt 1 failed; its delivery is being tried
		dstAdvance(time.Second) // the retry comes later (in the bubble, time moves only so)
		if _, err := task.Retry(context.Background(), q, r.ID, ""); err != nil {
			t.Fatal(err)
		}
		if rec := onFailure.next(t, time.Minute); rec.RequestContext.ApproximateInvokeCount != 2 {
			t.Fatalf("first record delivered is of attempt %d; want 2", rec.RequestContext.ApproximateInvokeCount)
		}
		close(h.release)
		released = true
		synctest.Wait()
		if n := len(onFailure.recs); n != 0 {
			t.Errorf("the delivery read before the retry sent a record too (attempt %d)", (<-onFailure.recs).RequestContext.ApproximateInvokeCount)
		}
	})
}

// An attempt that times out before its handler writes a status records no
// status (not net/http's implied 200), and its failure is
// RetriesExhausted, not the NonRetryableError a Classify of 0 would say.
func TestDestinationTimedOutAttempt(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := dstSetup(t, nil, nil)
		onFailure := newDstSink()
		b.register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }),
			&invoke.Policy{Timeout: time.Second, MaxRetries: invoke.NoRetries, OnFailure: onFailure})
		b.run()
		id := b.enqueue("work", "", time.Time{})
		rec := onFailure.next(t, time.Minute)
		if rec.RequestContext.Condition != destination.RetriesExhausted || rec.ResponseContext.StatusCode != 0 ||
			!strings.HasPrefix(rec.ResponseContext.FunctionError, "attempt timed out after 1s") {
			t.Errorf("record %+v %+v; want RetriesExhausted, no status, the timeout", rec.RequestContext, rec.ResponseContext)
		}
		if res := b.task(id).Response; res == nil || res.StatusCode != 0 {
			t.Errorf("task's response %+v; want one without a status", res)
		}
	})
}

// A destination that panics (an application bug) fails that delivery
// try, with the panic and its stack as the error; the process goes on, and
// the delivery is tried again as after any failure.
func TestDestinationPanicIsAFailedTry(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := dstSetup(t, nil, &invoke.Options{DeliveryTries: 2, DeliveryBackoffInitial: time.Minute, DeliveryBackoffMax: time.Minute})
		var calls atomic.Int32
		b.register("work", dstRespond(http.StatusOK, "ok"), &invoke.Policy{
			OnSuccess: destination.Func(func(context.Context, destination.Record) error {
				calls.Add(1)
				var seen map[string]bool
				seen["x"] = true
				return nil
			}),
		})
		b.run()
		id := b.enqueue("work", "", time.Time{})
		dstAdvance(time.Hour)
		if n := calls.Load(); n != 2 {
			t.Errorf("destination called %d times; want both tries", n)
		}
		ds := b.task(id).Deliveries
		if len(ds) != 1 || ds[0].Status != task.DeliveryFailed || ds[0].Tries != 2 ||
			!strings.HasPrefix(ds[0].LastError, "destination panicked: assignment to entry in nil map") ||
			!strings.Contains(ds[0].LastError, "TestDestinationPanicIsAFailedTry") {
			t.Errorf("deliveries %+v; want one failed after 2 tries, the panic and its stack as the error", ds)
		}
	})
}

// A failed task retried on request while its onFailure delivery waits
// for another try: the failure's record is gone, so the retry settles the
// waiting delivery as superseded rather than let it hand onFailure a
// record of the task's new outcome; the new finish gets its own delivery.
func TestDestinationRetriedTask(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := dstSetup(t, nil, &invoke.Options{DeliveryBackoffInitial: time.Minute, DeliveryBackoffMax: time.Minute})
		onSuccess, onFailure := newDstSink(), newDstSink()
		onFailure.FailFunc = func(ctx context.Context, n int) error {
			if n == 1 {
				return errors.New("down")
			}
			return nil
		}
		var fail atomic.Bool
		fail.Store(true)
		b.register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if fail.Load() {
				w.WriteHeader(http.StatusBadRequest)
			}
		}), &invoke.Policy{OnSuccess: onSuccess, OnFailure: onFailure})
		b.run()
		id := b.enqueue("work", "", time.Time{})
		synctest.Wait()
		b.wantDeliveries(id, task.Delivery{Destination: task.OnFailure, Status: task.DeliveryPending, Tries: 1, LastError: "down"})

		fail.Store(false)
		if _, err := task.Retry(context.Background(), b.q, id, ""); err != nil {
			t.Fatal(err)
		}
		if rec := onSuccess.next(t, time.Second); rec.RequestContext.Condition != destination.Success {
			t.Errorf("onSuccess got %s", rec.RequestContext.Condition)
		}
		dstAdvance(time.Hour)
		onFailure.none(t, "onFailure")
		b.wantDeliveries(id,
			task.Delivery{Destination: task.OnFailure, Status: task.DeliverySuperseded, Tries: 1, LastError: "down"},
			task.Delivery{Destination: task.OnSuccess, Status: task.DeliveryDelivered, Tries: 1})
	})
}

// The crash test: a child process (this test binary again, running
// TestDestinationCrashChild) finishes tasks whose destination never
// returns, and dies before any delivery is recorded; the next scheduler
// over the same database delivers every record.
const (
	dstCrashEnv   = "OFFLOAD_DESTINATION_CRASH_DB"
	dstCrashTasks = "OFFLOAD_DESTINATION_CRASH_TASKS"
	dstCrashMode  = "OFFLOAD_DESTINATION_CRASH_MODE" // "hang" (the parent SIGKILLs) or "exit"
	dstCrashReady = "offload-destination-crash-child: all tasks finished, deliveries in flight"
)

func TestDestinationCrash(t *testing.T) {
	t.Parallel()
	rounds := []struct {
		mode  string
		tasks int
	}{{"hang", 1}, {"hang", 5}, {"hang", 8}, {"exit", 3}}
	for i, r := range rounds {
		t.Run(fmt.Sprintf("%d-%s-%d", i+1, r.mode, r.tasks), func(t *testing.T) {
			t.Parallel()
			dstCrashRound(t, r.mode, r.tasks)
		})
	}
}

func dstCrashRound(t *testing.T, mode string, n int) {
	path := filepath.Join(t.TempDir(), "offload.db")
	q, err := queue.Open(path, dstQueueOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range n {
		r, err := q.Enqueue(context.Background(), &queue.Job{Target: "work", Request: dstRequest(fmt.Sprintf("job %d", i))})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestDestinationCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), dstCrashEnv+"="+path, dstCrashTasks+"="+strconv.Itoa(n), dstCrashMode+"="+mode)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready, eof := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(eof)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == dstCrashReady {
				close(ready)
			}
		}
	}()
	switch mode {
	case "hang":
		select {
		case <-ready:
		case <-eof:
			_ = cmd.Wait()
			t.Fatalf("child ended before its tasks finished: %v\n%s", cmd.ProcessState, stderr.String())
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			<-eof
			_ = cmd.Wait()
			t.Fatalf("child did not finish its tasks within a minute\n%s", stderr.String())
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-eof
		_ = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("child ended with %v; want killed by SIGKILL\n%s", cmd.ProcessState, stderr.String())
		}
	case "exit":
		select {
		case <-eof:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			<-eof
			_ = cmd.Wait()
			t.Fatalf("child did not exit within a minute\n%s", stderr.String())
		}
		_ = cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != dstCrashExitCode {
			t.Fatalf("child exited with %d; want %d\n%s", code, dstCrashExitCode, stderr.String())
		}
	}

	// Each task finished, and its delivery is still owed.
	q, err = queue.Open(path, dstQueueOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := q.Check(); err != nil {
			t.Error(err)
		}
		q.Close()
	})
	b := dstSetup(t, q, nil)
	for _, id := range ids {
		tk := b.task(id)
		if tk.Status != task.Succeeded {
			t.Fatalf("task %s is %s after the crash; want Succeeded", id, tk.Status)
		}
		b.wantDeliveries(id, task.Delivery{Destination: task.OnSuccess, Status: task.DeliveryPending})
	}

	// The next scheduler delivers them all.
	sink := newDstSink()
	b.register("work", dstRespond(http.StatusOK, "done"), &invoke.Policy{OnSuccess: sink})
	b.run()
	got := map[string]bool{}
	for range n {
		rec := sink.next(t, time.Minute)
		if rec.RequestContext.Condition != destination.Success || rec.ResponsePayload != "done" {
			t.Errorf("record after the crash: %+v", rec)
		}
		got[rec.RequestContext.RequestID] = true
	}
	b.stop()
	for _, id := range ids {
		if !got[id] {
			t.Errorf("record of %s lost in the crash", id)
		}
		b.wantDeliveries(id, task.Delivery{Destination: task.OnSuccess, Status: task.DeliveryDelivered, Tries: 1})
	}
	sink.none(t, "the destination")
	if tk := b.task(ids[0]); tk.Attempts != 1 {
		t.Errorf("task ran %d times; the crash came after it finished", tk.Attempts)
	}
}

const dstCrashExitCode = 7

// TestDestinationCrashChild is the process that TestDestinationCrash
// kills. Run on its own, without the environment, it does nothing.
func TestDestinationCrashChild(t *testing.T) {
	t.Parallel()
	path := os.Getenv(dstCrashEnv)
	if path == "" {
		return
	}
	n, _ := strconv.Atoi(os.Getenv(dstCrashTasks))
	exit := os.Getenv(dstCrashMode) == "exit"
	q, err := queue.Open(path, &queue.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	s, err := invoke.New(q, &invoke.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int64
	// Deliver is called only once a task's finish is committed, with its
	// outbox entry; this one never returns.
	never := destination.Func(func(ctx context.Context, rec destination.Record) error {
		if calls.Add(1) == int64(n) {
			if exit {
				os.Exit(dstCrashExitCode)
			}
			fmt.Println(dstCrashReady)
		}
		select {}
	})
	if err := s.Register("work", dstRespond(http.StatusOK, "done"), &invoke.Policy{OnSuccess: never}); err != nil {
		t.Fatal(err)
	}
	_ = s.Run(context.Background())
	t.Fatal("Run returned in the crash child")
}

// Within one run a healthy destination gets each record once: a delivery
// recorded while the outbox is being read is not sent again from that
// read's stale view.
func TestDestinationNoDuplicates(t *testing.T) {
	t.Parallel()
	const n = 2000
	q := testutil.OpenQueue(t, dstQueueOptions(t))
	dstFinished(t, q, n)
	b := dstSetup(t, q, &invoke.Options{DeliveryConcurrency: 64})
	var mu sync.Mutex
	seen := make(map[string]int, n)
	all := make(chan struct{})
	b.register("work", dstRespond(http.StatusOK, ""), &invoke.Policy{OnSuccess: destination.Func(func(ctx context.Context, rec destination.Record) error {
		mu.Lock()
		defer mu.Unlock()
		seen[rec.RequestContext.RequestID]++
		if len(seen) == n {
			close(all)
		}
		return nil
	})})
	b.run()
	select {
	case <-all:
	case <-time.After(2 * time.Minute):
		t.Fatalf("not every record delivered in 2 minutes")
	}
	b.stop()
	mu.Lock()
	defer mu.Unlock()
	for id, k := range seen {
		if k != 1 {
			t.Errorf("record of %s delivered %d times in one run", id, k)
		}
	}
}
