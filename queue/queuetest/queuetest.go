// Package queuetest is a conformance suite for offload queue backends, in
// the manner of testing/slogtest: a backend's own tests call [Run] with a
// function that opens a new, empty backend, and the suite checks the
// [queue.Backend] contract through the interface alone, so that the bbolt
// queue, the PostgreSQL one and any other are held to the same behaviour.
// A backend's test opens its own, for example:
//
//	func TestConformance(t *testing.T) {
//		queuetest.Run(t, func(t *testing.T) queue.Backend {
//			b, err := mybackend.Open(testDSN(t))
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { b.Close() })
//			return b
//		})
//	}
package queuetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// Run runs the conformance suite. open is called once for each subtest,
// possibly from several goroutines at once, and must return a new, empty
// backend that it closes in a t.Cleanup of its own. The backend's clock
// must be the wall clock: the suite passes time.Now() (and times hours
// from it) as the now of Lease.
//
// Times that the suite hands to the backend are whole milliseconds, so a
// backend may store them at millisecond precision.
func Run(t *testing.T, open func(t *testing.T) queue.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b queue.Backend)
	}{
		{"EnqueueGeneratedID", testEnqueueGeneratedID},
		{"EnqueueCallerID", testEnqueueCallerID},
		{"EnqueueInvalid", testEnqueueInvalid},
		{"ConcurrentCallerID", testConcurrentCallerID},
		{"Idempotency", testIdempotency},
		{"ConcurrentIdempotency", testConcurrentIdempotency},
		{"MaxQueued", testMaxQueued},
		{"ConcurrentMaxQueued", testConcurrentMaxQueued},
		{"ReadyOrder", testReadyOrder},
		{"LeaseTargets", testLeaseTargets},
		{"LeaseMarksRunning", testLeaseMarksRunning},
		{"FinishOutcomes", testFinishOutcomes},
		{"FinishRejectsOtherStatuses", testFinishRejectsOtherStatuses},
		{"Fencing", testFencing},
		{"Throttled", testThrottled},
		{"MaxAge", testMaxAge},
		{"Stop", testStop},
		{"StopRunning", testStopRunning},
		{"Retry", testRetry},
		{"DeliveryHistory", testDeliveryHistory},
		{"ListOddFilterStrings", testListOddFilterStrings},
		{"RetryUnregisteredTarget", testRetryUnregisteredTarget},
		{"Invalidate", testInvalidate},
		{"ReadyNotice", testReadyNotice},
		{"Bodies", testBodies},
		{"Report", testReport},
		{"Query", testQuery},
		{"ListBruteForce", testListBruteForce},
		{"ListPagingWhileChanging", testListPagingWhileChanging},
		{"ListBadCursor", testListBadCursor},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open(t))
		})
	}
}

// noticeWait bounds the wait for a notice that must come; it is a
// failure deadline, not a pause.
const noticeWait = 10 * time.Second

var ctx = context.Background()

// now is the wall clock at millisecond precision.
func now() time.Time { return time.Now().Truncate(time.Millisecond) }

func request(i int) *reqcodec.Request {
	body := fmt.Appendf(nil, `{"n":%d}`, i)
	return &reqcodec.Request{
		Method:     http.MethodPost,
		RequestURI: fmt.Sprintf("/jobs/%d?x=1", i),
		Proto:      "HTTP/1.1",
		Host:       "example.com",
		RemoteAddr: "192.0.2.1:1234",
		Header:     http.Header{"Content-Type": {"application/json"}, "X-N": {fmt.Sprint(i)}},
		Pattern:    "POST /jobs/{n}",
		PathValues: []reqcodec.KV{{Key: "n", Value: fmt.Sprint(i)}},
		BodySize:   int64(len(body)),
		Body:       body,
	}
}

func enqueue(t *testing.T, b queue.Backend, job *queue.Job) string {
	t.Helper()
	if job.Request == nil {
		job.Request = request(0)
	}
	r, err := b.Enqueue(ctx, job)
	if err != nil {
		t.Fatalf("Enqueue(%q, target %q): %v", job.ID, job.Target, err)
	}
	if r.Replayed {
		t.Fatalf("Enqueue(%q): Replayed without an idempotency key", job.ID)
	}
	return r.ID
}

func get(t *testing.T, b queue.Backend, id string) *task.Task {
	t.Helper()
	tk, err := task.Query(ctx, b, id)
	if err != nil {
		t.Fatalf("Query(%s): %v", id, err)
	}
	if tk.ID != id {
		t.Fatalf("Query(%s) returned task %s", id, tk.ID)
	}
	return tk
}

func wantStatus(t *testing.T, b queue.Backend, id string, want task.Status) *task.Task {
	t.Helper()
	tk := get(t, b, id)
	if tk.Status != want {
		t.Fatalf("task %s is %s, want %s", id, tk.Status, want)
	}
	return tk
}

func lease(t *testing.T, b queue.Backend, at time.Time, reqs ...queue.LeaseRequest) *queue.LeaseResult {
	t.Helper()
	res, err := b.Lease(ctx, at, reqs)
	if err != nil {
		t.Fatalf("Lease: %v", err)
	}
	return res
}

// leaseOne leases the one ready task of target and checks that it is id.
func leaseOne(t *testing.T, b queue.Backend, target, id string) *queue.Lease {
	t.Helper()
	res := lease(t, b, time.Now(), queue.LeaseRequest{Target: target, Max: 10})
	if len(res.Leases) != 1 || res.Leases[0].ID != id {
		t.Fatalf("Lease(%s) = %v, want exactly %s", target, leaseIDs(res), id)
	}
	return res.Leases[0]
}

func leaseIDs(res *queue.LeaseResult) []string {
	var ids []string
	for _, l := range res.Leases {
		ids = append(ids, l.ID)
	}
	return ids
}

func finish(t *testing.T, b queue.Backend, l *queue.Lease, o queue.Outcome) task.Status {
	t.Helper()
	st, err := b.Finish(ctx, l, o)
	if err != nil {
		t.Fatalf("Finish(%s, %s): %v", l.ID, o.Status, err)
	}
	return st
}

// notices records what a backend announces to its subscriber.
type notices struct {
	mu   sync.Mutex
	got  []queue.Notice
	more chan struct{}
}

func subscribe(t *testing.T, b queue.Backend) *notices {
	n := &notices{more: make(chan struct{}, 1)}
	t.Cleanup(b.Subscribe(func(x queue.Notice) {
		n.mu.Lock()
		n.got = append(n.got, x)
		n.mu.Unlock()
		select {
		case n.more <- struct{}{}:
		default:
		}
	}))
	return n
}

// waitFor waits until a recorded notice satisfies match, failing the test
// after noticeWait.
func (n *notices) waitFor(t *testing.T, what string, match func(queue.Notice) bool) {
	t.Helper()
	deadline := time.NewTimer(noticeWait)
	defer deadline.Stop()
	for {
		n.mu.Lock()
		found := slices.ContainsFunc(n.got, match)
		n.mu.Unlock()
		if found {
			return
		}
		select {
		case <-n.more:
		case <-deadline.C:
			t.Fatalf("no %s notice within %s", what, noticeWait)
		}
	}
}

func (n *notices) reset() {
	n.mu.Lock()
	n.got = nil
	n.mu.Unlock()
}

func within(t *testing.T, what string, got, lo, hi time.Time) {
	t.Helper()
	if got.Before(lo.Add(-time.Second)) || got.After(hi.Add(time.Second)) {
		t.Errorf("%s = %v, want within [%v, %v]", what, got, lo, hi)
	}
}

func testEnqueueGeneratedID(t *testing.T, b queue.Backend) {
	before := time.Now()
	req := request(7)
	id := enqueue(t, b, &queue.Job{Target: "gen", Request: req})
	after := time.Now()
	if !task.IsGenerated(id) {
		t.Fatalf("generated ID %q does not have the generated form", id)
	}
	tk := wantStatus(t, b, id, task.Enqueued)
	if tk.Target != "gen" || tk.Attempts != 0 || tk.RetryBase != 0 {
		t.Errorf("task = target %q attempts %d retryBase %d, want gen 0 0", tk.Target, tk.Attempts, tk.RetryBase)
	}
	within(t, "CreatedAt", tk.CreatedAt, before, after)
	within(t, "ReadyAt", tk.ReadyAt, before, after)
	if !tk.EnqueuedAt.Equal(tk.CreatedAt) {
		t.Errorf("EnqueuedAt %v != CreatedAt %v", tk.EnqueuedAt, tk.CreatedAt)
	}
	if !tk.StartedAt.IsZero() || !tk.FinishedAt.IsZero() {
		t.Errorf("new task has StartedAt %v FinishedAt %v", tk.StartedAt, tk.FinishedAt)
	}
	if len(tk.Events) == 0 || tk.Events[0].Status != task.Enqueued {
		t.Errorf("events = %+v, want Enqueued first", tk.Events)
	}
	want := task.Request{
		Method: req.Method, URL: req.RequestURI, Host: req.Host, RemoteAddr: req.RemoteAddr,
		Header: req.Header, BodySize: req.BodySize, Body: req.Body,
	}
	if got := tk.Request; got.Method != want.Method || got.URL != want.URL || got.Host != want.Host ||
		got.RemoteAddr != want.RemoteAddr || got.BodySize != want.BodySize || !bytes.Equal(got.Body, want.Body) ||
		fmt.Sprint(got.Header) != fmt.Sprint(want.Header) {
		t.Errorf("Request = %+v, want %+v", got, want)
	}

	// Generated IDs are unique, also under concurrency, and each task is
	// readable as soon as its Enqueue returns.
	const n = 64
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, err := b.Enqueue(ctx, &queue.Job{Target: "gen", Request: request(i)})
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := task.Query(ctx, b, r.ID); err != nil {
				t.Errorf("task %s not readable after Enqueue returned: %v", r.ID, err)
			}
			ids[i] = r.ID
		})
	}
	wg.Wait()
	slices.Sort(ids)
	if c := slices.Compact(slices.Clone(ids)); len(c) != n {
		t.Errorf("%d distinct IDs among %d enqueues", len(c), n)
	}
}

func testEnqueueCallerID(t *testing.T, b queue.Backend) {
	id := enqueue(t, b, &queue.Job{ID: "order_42-a", Target: "cid"})
	if id != "order_42-a" {
		t.Fatalf("Enqueue with caller ID returned %q", id)
	}
	wantStatus(t, b, id, task.Enqueued)

	_, err := b.Enqueue(ctx, &queue.Job{ID: "order_42-a", Target: "cid", Request: request(1)})
	if !errors.Is(err, task.ErrConflict) {
		t.Errorf("second Enqueue of the same ID: err = %v, want ErrConflict", err)
	}
	// Caller IDs are global, not per target.
	_, err = b.Enqueue(ctx, &queue.Job{ID: "order_42-a", Target: "other", Request: request(1)})
	if !errors.Is(err, task.ErrConflict) {
		t.Errorf("same ID on another target: err = %v, want ErrConflict", err)
	}
	// Still taken once the task has finished.
	l := leaseOne(t, b, "cid", id)
	finish(t, b, l, queue.Outcome{Status: task.Succeeded})
	_, err = b.Enqueue(ctx, &queue.Job{ID: "order_42-a", Target: "cid", Request: request(1)})
	if !errors.Is(err, task.ErrConflict) {
		t.Errorf("ID of a finished task: err = %v, want ErrConflict", err)
	}
	// IDs differing only in case are different IDs.
	enqueue(t, b, &queue.Job{ID: "ORDER_42-a", Target: "cid"})
}

func testEnqueueInvalid(t *testing.T, b queue.Backend) {
	for _, id := range []string{
		"1abc", "-x", "a/b", "a.b", "a b", "é", strings.Repeat("x", task.MaxIDLen+1),
		task.NewID(time.Now()), // a caller cannot pick an ID of the generated form
	} {
		_, err := b.Enqueue(ctx, &queue.Job{ID: id, Target: "inv", Request: request(0)})
		if !errors.Is(err, task.ErrInvalidID) {
			t.Errorf("Enqueue(ID %q): err = %v, want ErrInvalidID", id, err)
		}
	}
	for _, target := range []string{"", "a/b", "a b", strings.Repeat("t", task.MaxIDLen+1)} {
		_, err := b.Enqueue(ctx, &queue.Job{Target: target, Request: request(0)})
		if !errors.Is(err, task.ErrInvalidID) {
			t.Errorf("Enqueue(target %q): err = %v, want ErrInvalidID", target, err)
		}
	}
	if _, err := b.Enqueue(ctx, &queue.Job{Target: "inv"}); !errors.Is(err, queue.ErrInvalidJob) {
		t.Errorf("Enqueue without a request: err = %v, want ErrInvalidJob", err)
	}
	// A ReadyAt past what the queue can keep is refused, not wrapped into
	// the past (where the task would run at once).
	for _, at := range []time.Time{queue.MaxReadyAt.Add(time.Nanosecond), time.Date(2600, 1, 1, 0, 0, 0, 0, time.UTC)} {
		if _, err := b.Enqueue(ctx, &queue.Job{Target: "inv", ReadyAt: at, Request: request(0)}); !errors.Is(err, queue.ErrInvalidJob) {
			t.Errorf("Enqueue(ReadyAt %s): err = %v, want ErrInvalidJob", at, err)
		}
	}
	long := &queue.Job{Target: "inv", IdempotencyKey: strings.Repeat("k", queue.MaxIdempotencyKeyLen+1), Request: request(0)}
	if _, err := b.Enqueue(ctx, long); !errors.Is(err, task.ErrInvalidID) {
		t.Errorf("Enqueue with an idempotency key of %d bytes: err = %v, want ErrInvalidID", len(long.IdempotencyKey), err)
	}
	page, err := task.List(ctx, b, task.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Tasks) != 0 {
		t.Errorf("rejected enqueues stored %d tasks", len(page.Tasks))
	}
	longest := strings.Repeat("k", queue.MaxIdempotencyKeyLen)
	enqueue(t, b, &queue.Job{Target: "inv", IdempotencyKey: longest})
	far := time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC)
	if tk := get(t, b, enqueue(t, b, &queue.Job{Target: "inv", ReadyAt: far})); !tk.ReadyAt.Equal(far) {
		t.Errorf("ReadyAt %s reads back as %s", far, tk.ReadyAt)
	}
}

// A retry settles as superseded the delivery its task's finish still
// owed: the destination gets each later finish's record once, a late
// FinishDelivery of the stale one changes nothing, and past
// MaxDeliveryHistory settled deliveries are dropped, the pending one kept.
func testDeliveryHistory(t *testing.T, b queue.Backend) {
	b.SetDestinations("hist", false, true)
	id := enqueue(t, b, &queue.Job{Target: "hist", ReadyAt: time.Now().Add(time.Hour)})
	pending := func() []*queue.Delivery {
		t.Helper()
		ds, _, err := b.PendingDeliveries(ctx, time.Now().Add(time.Minute), 100, func(string) bool { return false })
		if err != nil {
			t.Fatal(err)
		}
		return ds
	}
	var first *queue.Delivery
	stops := queue.MaxDeliveryHistory + 4
	for i := range stops {
		if _, err := b.StopTask(ctx, id); err != nil {
			t.Fatal(err)
		}
		if ds := pending(); len(ds) != 1 || ds[0].TaskID != id {
			t.Fatalf("after stop %d: %d pending deliveries %+v; want this finish's only", i+1, len(ds), ds)
		} else if fin := get(t, b, id).FinishedAt; !ds[0].FinishedAt.Equal(fin) || (first != nil && fin.Equal(first.FinishedAt)) {
			t.Fatalf("after stop %d: the delivery reports the finish at %v; the task finished at %v", i+1, ds[0].FinishedAt, fin)
		} else if i == 0 {
			first = ds[0]
		}
		if i < stops-1 {
			if _, err := b.RetryTask(ctx, id, "again"); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The first stop's delivery, sent before the retry, reports late.
	if err := b.FinishDelivery(ctx, first, queue.DeliveryResult{}); err != nil {
		t.Fatal(err)
	}
	if ds := pending(); len(ds) != 1 {
		t.Errorf("a stale delivery's report settled the pending one: %d left", len(ds))
	}
	hist := get(t, b, id).Deliveries
	if len(hist) != queue.MaxDeliveryHistory {
		t.Fatalf("history of %d deliveries; want %d: %+v", len(hist), queue.MaxDeliveryHistory, hist)
	}
	for i, d := range hist {
		want := task.DeliverySuperseded
		if i == len(hist)-1 {
			want = task.DeliveryPending
		}
		if d.Status != want || d.Destination != task.OnFailure {
			t.Errorf("delivery %d of %d is %s %s; want %s %s", i+1, len(hist), d.Destination, d.Status, task.OnFailure, want)
		}
	}
}

// A filter that no task can match, whatever its bytes (a NUL, invalid
// UTF-8, a prefix whose next string is not text), lists nothing rather
// than failing as if the store were down.
func testListOddFilterStrings(t *testing.T, b queue.Backend) {
	enqueue(t, b, &queue.Job{ID: "odd_1", Target: "odd"})
	for _, f := range []task.Filter{
		{Target: "odd\x00"},
		{Target: "odd\xff"},
		{IDPrefix: "odd\x00"},
		{IDPrefix: "od\xffd"},
		{IDPrefix: "od\xffd", Statuses: []task.Status{task.Enqueued}},
		{IDPrefix: "odd\x7f"},
		{IDPrefix: "odd¿"},
	} {
		page, err := task.List(ctx, b, f)
		if err != nil || len(page.Tasks) != 0 {
			t.Errorf("List(target %q, prefix %q) = %v, %v; want an empty page", f.Target, f.IDPrefix, page, err)
		}
	}
}

func testConcurrentCallerID(t *testing.T, b queue.Backend) {
	const callers = 16
	for round := range 8 {
		id := fmt.Sprintf("race_%d", round)
		var (
			wg        sync.WaitGroup
			mu        sync.Mutex
			ok, confl int
		)
		for i := range callers {
			wg.Go(func() {
				r, err := b.Enqueue(ctx, &queue.Job{ID: id, Target: fmt.Sprintf("race%d", i%3), Request: request(i)})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil && r.ID == id && !r.Replayed:
					ok++
				case errors.Is(err, task.ErrConflict):
					confl++
				default:
					t.Errorf("Enqueue(%s) = %+v, %v", id, r, err)
				}
			})
		}
		wg.Wait()
		if ok != 1 || confl != callers-1 {
			t.Errorf("round %d: %d succeeded and %d conflicted, want 1 and %d", round, ok, confl, callers-1)
		}
		wantStatus(t, b, id, task.Enqueued)
	}
}

func fingerprint(s string) [32]byte { return sha256.Sum256([]byte(s)) }

func testIdempotency(t *testing.T, b queue.Backend) {
	first := enqueue(t, b, &queue.Job{Target: "idem", IdempotencyKey: "k1", Fingerprint: fingerprint("body")})
	r, err := b.Enqueue(ctx, &queue.Job{Target: "idem", IdempotencyKey: "k1", Fingerprint: fingerprint("body"), Request: request(1)})
	if err != nil || r.ID != first || !r.Replayed {
		t.Errorf("same key and fingerprint: %+v, %v; want replay of %s", r, err, first)
	}
	_, err = b.Enqueue(ctx, &queue.Job{Target: "idem", IdempotencyKey: "k1", Fingerprint: fingerprint("other"), Request: request(1)})
	if !errors.Is(err, task.ErrIdempotencyMismatch) {
		t.Errorf("same key, other fingerprint: err = %v, want ErrIdempotencyMismatch", err)
	}
	// Keys are per target.
	other := enqueue(t, b, &queue.Job{Target: "idem2", IdempotencyKey: "k1", Fingerprint: fingerprint("other")})
	if other == first {
		t.Error("a key on another target replayed the first task")
	}
	// The replay holds after the task has finished.
	l := leaseOne(t, b, "idem", first)
	finish(t, b, l, queue.Outcome{Status: task.Failed})
	r, err = b.Enqueue(ctx, &queue.Job{Target: "idem", IdempotencyKey: "k1", Fingerprint: fingerprint("body"), Request: request(1)})
	if err != nil || r.ID != first || !r.Replayed {
		t.Errorf("replay after finish: %+v, %v; want replay of %s", r, err, first)
	}
	// A retried request that names its task and carries its key is
	// answered with the first acceptance, not with a conflict.
	named := enqueue(t, b, &queue.Job{ID: "named", Target: "idem", IdempotencyKey: "k2", Fingerprint: fingerprint("b2")})
	r, err = b.Enqueue(ctx, &queue.Job{ID: "named", Target: "idem", IdempotencyKey: "k2", Fingerprint: fingerprint("b2"), Request: request(2)})
	if err != nil || r.ID != named || !r.Replayed {
		t.Errorf("replay of a named task: %+v, %v; want replay of %s", r, err, named)
	}
	page, err := task.List(ctx, b, task.Filter{Target: "idem"})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Tasks) != 2 {
		t.Errorf("target idem holds %d tasks, want 2", len(page.Tasks))
	}
}

func testConcurrentIdempotency(t *testing.T, b queue.Backend) {
	const callers = 16
	for round := range 4 {
		key := fmt.Sprintf("key-%d", round)
		ids := make([]string, callers)
		replayed := make([]bool, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				r, err := b.Enqueue(ctx, &queue.Job{Target: "cidem", IdempotencyKey: key, Fingerprint: fingerprint(key), Request: request(i)})
				if err != nil {
					t.Errorf("Enqueue: %v", err)
				}
				ids[i], replayed[i] = r.ID, r.Replayed
			})
		}
		wg.Wait()
		if n := len(slices.Compact(slices.Sorted(slices.Values(ids)))); n != 1 {
			t.Errorf("round %d: %d distinct IDs for one idempotency key", round, n)
		}
		if n := callers - len(slices.DeleteFunc(replayed, func(r bool) bool { return !r })); n != 1 {
			t.Errorf("round %d: %d enqueues stored a task, want 1", round, n)
		}
	}
}

func testMaxQueued(t *testing.T, b queue.Backend) {
	job := func(target string) *queue.Job {
		return &queue.Job{Target: target, MaxQueued: 3, Request: request(0)}
	}
	var ids []string
	for range 3 {
		ids = append(ids, enqueue(t, b, job("full")))
	}
	if _, err := b.Enqueue(ctx, job("full")); !errors.Is(err, task.ErrQueueFull) {
		t.Fatalf("4th enqueue with MaxQueued 3: err = %v, want ErrQueueFull", err)
	}
	enqueue(t, b, job("notfull"))             // the bound is per target
	enqueue(t, b, &queue.Job{Target: "full"}) // and per job: 0 is unbounded

	// Running tasks are unfinished: still counted.
	res := lease(t, b, time.Now(), queue.LeaseRequest{Target: "full", Max: 1})
	if len(res.Leases) != 1 {
		t.Fatalf("leased %d", len(res.Leases))
	}
	if _, err := b.Enqueue(ctx, job("full")); !errors.Is(err, task.ErrQueueFull) {
		t.Fatalf("with a task running: err = %v, want ErrQueueFull", err)
	}
	// A finished task makes room for one more.
	finish(t, b, res.Leases[0], queue.Outcome{Status: task.Succeeded})
	if _, err := b.Enqueue(ctx, &queue.Job{Target: "full", MaxQueued: 4, Request: request(0)}); err != nil {
		t.Fatalf("after a finish: %v", err)
	}
	if _, err := b.Enqueue(ctx, &queue.Job{Target: "full", MaxQueued: 4, Request: request(0)}); !errors.Is(err, task.ErrQueueFull) {
		t.Fatalf("full again: err = %v, want ErrQueueFull", err)
	}
	// Stopping a queued task frees its place too.
	if _, err := task.Stop(ctx, b, ids[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Enqueue(ctx, &queue.Job{Target: "full", MaxQueued: 4, Request: request(0)}); err != nil {
		t.Fatalf("after a stop: %v", err)
	}
}

func testConcurrentMaxQueued(t *testing.T, b queue.Backend) {
	const callers, bound = 24, 5
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		ok, full int
	)
	for i := range callers {
		wg.Go(func() {
			_, err := b.Enqueue(ctx, &queue.Job{Target: "cfull", MaxQueued: bound, Request: request(i)})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, task.ErrQueueFull):
				full++
			default:
				t.Errorf("Enqueue: %v", err)
			}
		})
	}
	wg.Wait()
	if ok != bound || full != callers-bound {
		t.Errorf("%d accepted and %d refused, want %d and %d", ok, full, bound, callers-bound)
	}
}

func testReadyOrder(t *testing.T, b queue.Backend) {
	base := now().Add(time.Hour)
	// Enqueue in an order unrelated to the ready times.
	offsets := []int{4, 1, 5, 0, 3, 2}
	byOffset := map[int]string{}
	for _, off := range offsets {
		at := base.Add(time.Duration(off) * time.Minute)
		id := enqueue(t, b, &queue.Job{Target: "order", ReadyAt: at})
		byOffset[off] = id
		if tk := get(t, b, id); !tk.ReadyAt.Equal(at) {
			t.Errorf("ReadyAt = %v, want %v", tk.ReadyAt, at)
		}
	}
	// Nothing is ready yet; Next is the earliest ready time.
	res := lease(t, b, time.Now(), queue.LeaseRequest{Target: "order", Max: 10})
	if len(res.Leases) != 0 || len(res.Expired) != 0 {
		t.Fatalf("leased %v before any task was ready", leaseIDs(res))
	}
	if !res.Next.Equal(base) {
		t.Fatalf("Next = %v, want %v", res.Next, base)
	}
	// At base+2.5min, the three earliest are ready, oldest ready first;
	// Next moves to the fourth.
	res = lease(t, b, base.Add(150*time.Second), queue.LeaseRequest{Target: "order", Max: 10})
	if got, want := leaseIDs(res), []string{byOffset[0], byOffset[1], byOffset[2]}; !slices.Equal(got, want) {
		t.Fatalf("leased %v, want %v", got, want)
	}
	if want := base.Add(3 * time.Minute); !res.Next.Equal(want) {
		t.Errorf("Next = %v, want %v", res.Next, want)
	}
	// Max bounds a lease; the rest stays ready, in order.
	late := base.Add(time.Hour)
	for _, off := range []int{3, 4, 5} {
		res = lease(t, b, late, queue.LeaseRequest{Target: "order", Max: 1})
		if got := leaseIDs(res); !slices.Equal(got, []string{byOffset[off]}) {
			t.Fatalf("leased %v, want [%s]", got, byOffset[off])
		}
	}
	res = lease(t, b, late, queue.LeaseRequest{Target: "order", Max: 10})
	if len(res.Leases) != 0 || !res.Next.IsZero() {
		t.Errorf("empty target: leased %v, Next %v; want none and zero", leaseIDs(res), res.Next)
	}

	// A ready time in the past means now.
	past := enqueue(t, b, &queue.Job{Target: "order", ReadyAt: time.Now().Add(-time.Hour)})
	if tk := get(t, b, past); tk.ReadyAt.Before(tk.CreatedAt) {
		t.Errorf("ReadyAt %v before CreatedAt %v", tk.ReadyAt, tk.CreatedAt)
	}
	leaseOne(t, b, "order", past)

	// Equal ready times: each leased once.
	at := base.Add(2 * time.Hour)
	var same []string
	for range 5 {
		same = append(same, enqueue(t, b, &queue.Job{Target: "order", ReadyAt: at}))
	}
	res = lease(t, b, at, queue.LeaseRequest{Target: "order", Max: 10})
	if got := slices.Sorted(slices.Values(leaseIDs(res))); !slices.Equal(got, slices.Sorted(slices.Values(same))) {
		t.Errorf("leased %v, want %v", got, same)
	}
}

func testLeaseTargets(t *testing.T, b queue.Backend) {
	a := enqueue(t, b, &queue.Job{Target: "ta"})
	bID := enqueue(t, b, &queue.Job{Target: "tb"})
	c := enqueue(t, b, &queue.Job{Target: "tc", ReadyAt: now().Add(time.Hour)})
	// Only the requested targets.
	res := lease(t, b, time.Now(), queue.LeaseRequest{Target: "tb", Max: 5})
	if got := leaseIDs(res); !slices.Equal(got, []string{bID}) {
		t.Fatalf("leased %v, want [%s]", got, bID)
	}
	// Several targets in one call; Next covers every requested target.
	res = lease(t, b, time.Now(), queue.LeaseRequest{Target: "ta", Max: 5}, queue.LeaseRequest{Target: "tc", Max: 5},
		queue.LeaseRequest{Target: "unknown", Max: 5})
	if got := leaseIDs(res); !slices.Equal(got, []string{a}) {
		t.Fatalf("leased %v, want [%s]", got, a)
	}
	if want := get(t, b, c).ReadyAt; !res.Next.Equal(want) {
		t.Errorf("Next = %v, want %v", res.Next, want)
	}
	// Max 0 leases nothing.
	d := enqueue(t, b, &queue.Job{Target: "td"})
	if res = lease(t, b, time.Now(), queue.LeaseRequest{Target: "td"}); len(res.Leases) != 0 {
		t.Errorf("Max 0 leased %v", leaseIDs(res))
	}
	wantStatus(t, b, d, task.Enqueued)
}

func testLeaseMarksRunning(t *testing.T, b queue.Backend) {
	req := request(3)
	id := enqueue(t, b, &queue.Job{Target: "run", Request: req})
	created := get(t, b, id).CreatedAt
	at := time.Now()
	l := leaseOne(t, b, "run", id)
	if l.Target != "run" || l.Attempt != 1 || l.RetryBase != 0 || !l.CreatedAt.Equal(created) || !l.EnqueuedAt.Equal(created) {
		t.Errorf("lease = %+v", l)
	}
	if l.Corrupt != nil || l.Request == nil {
		t.Fatalf("lease request = %v, %v", l.Request, l.Corrupt)
	}
	if l.Request.Method != req.Method || l.Request.RequestURI != req.RequestURI || l.Request.Pattern != req.Pattern ||
		!slices.Equal(l.Request.PathValues, req.PathValues) || !bytes.Equal(l.Request.Body, req.Body) ||
		fmt.Sprint(l.Request.Header) != fmt.Sprint(req.Header) {
		t.Errorf("lease request = %+v, want %+v", l.Request, req)
	}
	tk := wantStatus(t, b, id, task.Running)
	if tk.Attempts != 1 {
		t.Errorf("Attempts = %d, want 1", tk.Attempts)
	}
	within(t, "StartedAt", tk.StartedAt, at, time.Now())
	if !tk.ReadyAt.IsZero() || !tk.FinishedAt.IsZero() {
		t.Errorf("running task has ReadyAt %v FinishedAt %v", tk.ReadyAt, tk.FinishedAt)
	}
	if e := tk.Events[len(tk.Events)-1]; e.Status != task.Running || e.Attempt != 1 {
		t.Errorf("last event = %+v, want Running attempt 1", e)
	}
	// A running task is not leased again.
	if res := lease(t, b, time.Now().Add(time.Hour), queue.LeaseRequest{Target: "run", Max: 5}); len(res.Leases) != 0 {
		t.Errorf("running task leased again: %v", leaseIDs(res))
	}
}

func testFinishOutcomes(t *testing.T, b queue.Backend) {
	resp := &task.Response{StatusCode: 502, Header: http.Header{"X-R": {"1"}}, Body: []byte("bad gateway"), BodySize: 11}
	for i, st := range []task.Status{task.Succeeded, task.Failed, task.Expired, task.Invalid} {
		target := fmt.Sprintf("fin%d", i)
		id := enqueue(t, b, &queue.Job{Target: target})
		l := leaseOne(t, b, target, id)
		before := time.Now()
		if got := finish(t, b, l, queue.Outcome{Status: st, Error: "boom " + string(st), Detail: "d", Response: resp}); got != st {
			t.Errorf("Finish(%s) = %s", st, got)
		}
		tk := wantStatus(t, b, id, st)
		within(t, string(st)+" FinishedAt", tk.FinishedAt, before, time.Now())
		if tk.Attempts != 1 || tk.LastError != "boom "+string(st) || !tk.ReadyAt.IsZero() {
			t.Errorf("%s: attempts %d lastError %q readyAt %v", st, tk.Attempts, tk.LastError, tk.ReadyAt)
		}
		if tk.Response == nil || tk.Response.StatusCode != 502 || string(tk.Response.Body) != "bad gateway" ||
			tk.Response.BodySize != 11 || tk.Response.Header.Get("X-R") != "1" {
			t.Errorf("%s: response = %+v", st, tk.Response)
		}
		if e := tk.Events[len(tk.Events)-1]; e.Status != st || e.Detail != "d" {
			t.Errorf("%s: last event = %+v", st, e)
		}
		if res := lease(t, b, time.Now().Add(48*time.Hour), queue.LeaseRequest{Target: target, Max: 5}); len(res.Leases) != 0 {
			t.Errorf("%s task leased again", st)
		}
	}

	// Retrying: waits until ReadyAt, then runs as attempt 2.
	id := enqueue(t, b, &queue.Job{Target: "retrying"})
	l := leaseOne(t, b, "retrying", id)
	readyAt := now().Add(time.Hour)
	if got := finish(t, b, l, queue.Outcome{Status: task.Retrying, ReadyAt: readyAt, Error: "503"}); got != task.Retrying {
		t.Fatalf("Finish(Retrying) = %s", got)
	}
	tk := wantStatus(t, b, id, task.Retrying)
	if !tk.ReadyAt.Equal(readyAt) || tk.Attempts != 1 || !tk.FinishedAt.IsZero() || tk.LastError != "503" {
		t.Errorf("retrying task: readyAt %v attempts %d finishedAt %v lastError %q", tk.ReadyAt, tk.Attempts, tk.FinishedAt, tk.LastError)
	}
	res := lease(t, b, time.Now(), queue.LeaseRequest{Target: "retrying", Max: 5})
	if len(res.Leases) != 0 || !res.Next.Equal(readyAt) {
		t.Errorf("before ReadyAt: leased %v, Next %v", leaseIDs(res), res.Next)
	}
	res = lease(t, b, readyAt, queue.LeaseRequest{Target: "retrying", Max: 5})
	if len(res.Leases) != 1 || res.Leases[0].Attempt != 2 {
		t.Fatalf("at ReadyAt: %+v", res.Leases)
	}
	if tk := wantStatus(t, b, id, task.Running); tk.Attempts != 2 {
		t.Errorf("Attempts = %d, want 2", tk.Attempts)
	}
	// Retrying with a past ReadyAt is ready at once.
	finish(t, b, res.Leases[0], queue.Outcome{Status: task.Retrying, ReadyAt: time.Now().Add(-time.Hour)})
	if l := leaseOne(t, b, "retrying", id); l.Attempt != 3 {
		t.Errorf("attempt = %d, want 3", l.Attempt)
	}

	// Enqueued: handed back unrun, the attempt uncounted.
	id = enqueue(t, b, &queue.Job{Target: "handback"})
	l = leaseOne(t, b, "handback", id)
	if got := finish(t, b, l, queue.Outcome{Status: task.Enqueued}); got != task.Enqueued {
		t.Fatalf("Finish(Enqueued) = %s", got)
	}
	if tk := wantStatus(t, b, id, task.Enqueued); tk.Attempts != 0 || !tk.FinishedAt.IsZero() {
		t.Errorf("handed back: attempts %d finishedAt %v", tk.Attempts, tk.FinishedAt)
	}
	if l = leaseOne(t, b, "handback", id); l.Attempt != 1 {
		t.Errorf("attempt after hand-back = %d, want 1", l.Attempt)
	}
}

func testFinishRejectsOtherStatuses(t *testing.T, b queue.Backend) {
	id := enqueue(t, b, &queue.Job{Target: "rej"})
	l := leaseOne(t, b, "rej", id)
	for _, st := range []task.Status{task.Running, task.Stopping, task.Stopped, "Bogus"} {
		if _, err := b.Finish(ctx, l, queue.Outcome{Status: st}); !errors.Is(err, task.ErrInvalidTransition) {
			t.Errorf("Finish(%s): err = %v, want ErrInvalidTransition", st, err)
		}
	}
	wantStatus(t, b, id, task.Running)
	finish(t, b, l, queue.Outcome{Status: task.Succeeded})
}

func testFencing(t *testing.T, b queue.Backend) {
	id := enqueue(t, b, &queue.Job{Target: "fence"})
	l1 := leaseOne(t, b, "fence", id)
	stale := *l1
	finish(t, b, l1, queue.Outcome{Status: task.Retrying})
	// The same attempt cannot finish twice.
	if _, err := b.Finish(ctx, &stale, queue.Outcome{Status: task.Succeeded}); !errors.Is(err, task.ErrLeaseLost) {
		t.Fatalf("second finish of attempt 1: err = %v, want ErrLeaseLost", err)
	}
	l2 := leaseOne(t, b, "fence", id)
	if l2.Attempt != 2 {
		t.Fatalf("attempt = %d, want 2", l2.Attempt)
	}
	// Attempt 1 cannot finish attempt 2.
	if _, err := b.Finish(ctx, &stale, queue.Outcome{Status: task.Failed}); !errors.Is(err, task.ErrLeaseLost) {
		t.Fatalf("stale finish: err = %v, want ErrLeaseLost", err)
	}
	if tk := wantStatus(t, b, id, task.Running); tk.Attempts != 2 {
		t.Errorf("Attempts = %d after a stale finish", tk.Attempts)
	}
	finish(t, b, l2, queue.Outcome{Status: task.Failed})
	// A retried task is a new lease too.
	if _, err := task.Retry(ctx, b, id, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Finish(ctx, l2, queue.Outcome{Status: task.Succeeded}); !errors.Is(err, task.ErrLeaseLost) {
		t.Errorf("finish of a retried task's old lease: err = %v, want ErrLeaseLost", err)
	}
	l3 := leaseOne(t, b, "fence", id)
	if _, err := b.Finish(ctx, l2, queue.Outcome{Status: task.Succeeded}); !errors.Is(err, task.ErrLeaseLost) {
		t.Errorf("finish of attempt 2 while 3 runs: err = %v, want ErrLeaseLost", err)
	}
	finish(t, b, l3, queue.Outcome{Status: task.Succeeded})
	// Fenced by ID too: another task's lease handle does not carry over.
	other := enqueue(t, b, &queue.Job{Target: "fence"})
	lo := leaseOne(t, b, "fence", other)
	forged := *lo
	forged.Attempt = 7
	if _, err := b.Finish(ctx, &forged, queue.Outcome{Status: task.Succeeded}); !errors.Is(err, task.ErrLeaseLost) {
		t.Errorf("finish with a wrong attempt: err = %v, want ErrLeaseLost", err)
	}
	finish(t, b, lo, queue.Outcome{Status: task.Succeeded})
}

// testThrottled: throttled attempts are counted on the lease since the
// last explicit retry, which starts a fresh budget.
func testThrottled(t *testing.T, b queue.Backend) {
	id := enqueue(t, b, &queue.Job{Target: "throttle"})
	l := leaseOne(t, b, "throttle", id)
	if l.Throttled != 0 {
		t.Errorf("first lease: Throttled = %d", l.Throttled)
	}
	finish(t, b, l, queue.Outcome{Status: task.Retrying, Throttled: true})
	l = leaseOne(t, b, "throttle", id)
	finish(t, b, l, queue.Outcome{Status: task.Retrying})
	l = leaseOne(t, b, "throttle", id)
	finish(t, b, l, queue.Outcome{Status: task.Retrying, Throttled: true})
	l = leaseOne(t, b, "throttle", id)
	if l.Attempt != 4 || l.Throttled != 2 {
		t.Errorf("attempt %d throttled %d, want 4 and 2", l.Attempt, l.Throttled)
	}
	finish(t, b, l, queue.Outcome{Status: task.Failed, Throttled: true})
	if _, err := task.Retry(ctx, b, id, ""); err != nil {
		t.Fatal(err)
	}
	l = leaseOne(t, b, "throttle", id)
	if l.Attempt != 5 || l.RetryBase != 4 || l.Throttled != 0 {
		t.Errorf("after retry: attempt %d retryBase %d throttled %d, want 5, 4 and 0", l.Attempt, l.RetryBase, l.Throttled)
	}
}

func testMaxAge(t *testing.T, b queue.Backend) {
	old := enqueue(t, b, &queue.Job{Target: "age"})
	created := get(t, b, old).CreatedAt
	// Within MaxAge: leased.
	res := lease(t, b, created.Add(30*time.Minute), queue.LeaseRequest{Target: "age", Max: 5, MaxAge: time.Hour})
	if len(res.Leases) != 1 {
		t.Fatalf("within MaxAge: leased %v", leaseIDs(res))
	}
	finish(t, b, res.Leases[0], queue.Outcome{Status: task.Retrying})

	// Past MaxAge: Expired instead of leased, and reported.
	at := created.Add(2 * time.Hour)
	res = lease(t, b, at, queue.LeaseRequest{Target: "age", Max: 5, MaxAge: time.Hour})
	if len(res.Leases) != 0 || len(res.Expired) != 1 || res.Expired[0].ID != old || res.Expired[0].Status != task.Expired {
		t.Fatalf("past MaxAge: leases %v expired %+v", leaseIDs(res), res.Expired)
	}
	tk := wantStatus(t, b, old, task.Expired)
	if tk.FinishedAt.IsZero() || tk.LastError == "" || tk.Attempts != 1 {
		t.Errorf("expired task: finishedAt %v lastError %q attempts %d", tk.FinishedAt, tk.LastError, tk.Attempts)
	}
	// MaxAge 0 is no limit.
	fresh := enqueue(t, b, &queue.Job{Target: "age"})
	res = lease(t, b, time.Now().Add(1000*time.Hour), queue.LeaseRequest{Target: "age", Max: 5})
	if got := leaseIDs(res); !slices.Equal(got, []string{fresh}) {
		t.Errorf("without MaxAge: leased %v, want [%s]", got, fresh)
	}
	// A retry restarts the clock: MaxAge counts from EnqueuedAt.
	retried, err := task.Retry(ctx, b, old, "again")
	if err != nil {
		t.Fatal(err)
	}
	if !retried.EnqueuedAt.After(created) {
		t.Errorf("EnqueuedAt after retry = %v, not after %v", retried.EnqueuedAt, created)
	}
	res = lease(t, b, retried.EnqueuedAt.Add(30*time.Minute), queue.LeaseRequest{Target: "age", Max: 5, MaxAge: time.Hour})
	if got := leaseIDs(res); !slices.Equal(got, []string{old}) || len(res.Expired) != 0 {
		t.Errorf("after retry: leased %v expired %d", got, len(res.Expired))
	}

	// An expired task takes the place of a ready one that Max left out:
	// Next says to lease again at once, or a scheduler would wait for a
	// notice that never comes.
	at = now().Add(time.Hour)
	stale := enqueue(t, b, &queue.Job{Target: "age2", ReadyAt: at})
	ready := enqueue(t, b, &queue.Job{Target: "age2", ReadyAt: at.Add(time.Millisecond)})
	t1, t2 := get(t, b, stale).EnqueuedAt, get(t, b, ready).EnqueuedAt
	if !t1.Before(t2) {
		t.Fatalf("enqueued one after the other at %v and %v", t1, t2)
	}
	leaseAt := at.Add(time.Hour)
	maxAge := leaseAt.Sub(t1) - t2.Sub(t1)/2 // stale is past it, ready is not
	res = lease(t, b, leaseAt, queue.LeaseRequest{Target: "age2", Max: 1, MaxAge: maxAge})
	if len(res.Leases) != 0 || len(res.Expired) != 1 || res.Expired[0].ID != stale {
		t.Fatalf("leases %v expired %+v, want only %s expired", leaseIDs(res), res.Expired, stale)
	}
	if res.Next.IsZero() || res.Next.After(leaseAt) {
		t.Errorf("Next = %v with a ready task left behind, want a time not after %v", res.Next, leaseAt)
	}
	res = lease(t, b, leaseAt, queue.LeaseRequest{Target: "age2", Max: 1, MaxAge: maxAge})
	if got := leaseIDs(res); !slices.Equal(got, []string{ready}) {
		t.Errorf("second lease: %v, want [%s]", got, ready)
	}
}

func testStop(t *testing.T, b queue.Backend) {
	// Queued: Stopped at once, never leased.
	queued := enqueue(t, b, &queue.Job{Target: "stop"})
	tk, err := task.Stop(ctx, b, queued)
	if err != nil || tk.Status != task.Stopped || tk.FinishedAt.IsZero() {
		t.Fatalf("Stop(queued) = %+v, %v", tk, err)
	}
	delayed := enqueue(t, b, &queue.Job{Target: "stop", ReadyAt: now().Add(time.Hour)})
	if tk, err = task.Stop(ctx, b, delayed); err != nil || tk.Status != task.Stopped {
		t.Fatalf("Stop(delayed) = %+v, %v", tk, err)
	}
	if res := lease(t, b, time.Now().Add(2*time.Hour), queue.LeaseRequest{Target: "stop", Max: 5}); len(res.Leases) != 0 {
		t.Errorf("stopped tasks leased: %v", leaseIDs(res))
	}

	// Retrying: Stopped at once.
	retrying := enqueue(t, b, &queue.Job{Target: "stop"})
	finish(t, b, leaseOne(t, b, "stop", retrying), queue.Outcome{Status: task.Retrying, ReadyAt: now().Add(time.Hour)})
	if tk, err = task.Stop(ctx, b, retrying); err != nil || tk.Status != task.Stopped || tk.Attempts != 1 {
		t.Fatalf("Stop(retrying) = %+v, %v", tk, err)
	}
	if res := lease(t, b, time.Now().Add(2*time.Hour), queue.LeaseRequest{Target: "stop", Max: 5}); len(res.Leases) != 0 {
		t.Errorf("stopped retrying task leased: %v", leaseIDs(res))
	}

	// Terminal: ErrFinished, unchanged.
	for _, st := range []task.Status{task.Succeeded, task.Failed, task.Expired, task.Invalid} {
		id := enqueue(t, b, &queue.Job{Target: "stop"})
		finish(t, b, leaseOne(t, b, "stop", id), queue.Outcome{Status: st})
		if _, err := task.Stop(ctx, b, id); !errors.Is(err, task.ErrFinished) {
			t.Errorf("Stop(%s): err = %v, want ErrFinished", st, err)
		}
		wantStatus(t, b, id, st)
	}
	if _, err := task.Stop(ctx, b, queued); !errors.Is(err, task.ErrFinished) {
		t.Errorf("Stop(Stopped): err = %v, want ErrFinished", err)
	}

	// Unknown.
	for _, id := range []string{"nobody", task.NewID(time.Now())} {
		if _, err := task.Stop(ctx, b, id); !errors.Is(err, task.ErrNotFound) {
			t.Errorf("Stop(%s): err = %v, want ErrNotFound", id, err)
		}
	}
}

func testStopRunning(t *testing.T, b queue.Backend) {
	n := subscribe(t, b)
	for i, outcome := range []task.Status{task.Succeeded, task.Failed, task.Retrying, task.Expired, task.Invalid, task.Enqueued} {
		target := fmt.Sprintf("stoprun%d", i)
		id := enqueue(t, b, &queue.Job{Target: target})
		l := leaseOne(t, b, target, id)
		tk, err := task.Stop(ctx, b, id)
		if err != nil || tk.Status != task.Stopping {
			t.Fatalf("Stop(running) = %+v, %v", tk, err)
		}
		n.waitFor(t, "StopRequested "+id, func(x queue.Notice) bool { return x.Kind == queue.StopRequested && x.ID == id })
		// Stopping again changes nothing.
		if tk, err = task.Stop(ctx, b, id); err != nil || tk.Status != task.Stopping {
			t.Fatalf("Stop(stopping) = %+v, %v", tk, err)
		}
		if _, err := task.Retry(ctx, b, id, ""); !errors.Is(err, task.ErrNotRetryable) {
			t.Errorf("Retry(stopping): err = %v, want ErrNotRetryable", err)
		}
		// Whatever the attempt's outcome, the task ends Stopped, no retry follows.
		if got := finish(t, b, l, queue.Outcome{Status: outcome, ReadyAt: time.Now()}); got != task.Stopped {
			t.Errorf("Finish(%s) of a stopping task = %s, want Stopped", outcome, got)
		}
		tk = wantStatus(t, b, id, task.Stopped)
		if tk.Attempts != 1 || tk.FinishedAt.IsZero() {
			t.Errorf("stopped task: attempts %d finishedAt %v", tk.Attempts, tk.FinishedAt)
		}
		if res := lease(t, b, time.Now().Add(time.Hour), queue.LeaseRequest{Target: target, Max: 5}); len(res.Leases) != 0 {
			t.Errorf("stopped task leased again")
		}
		if _, err := b.Finish(ctx, l, queue.Outcome{Status: task.Succeeded}); !errors.Is(err, task.ErrLeaseLost) {
			t.Errorf("second finish: err = %v, want ErrLeaseLost", err)
		}
	}
}

// Once a scheduler has registered its targets (Invalidate), a retry of a
// task whose target it does not run is refused rather than left waiting
// forever; one of a target it runs goes ahead.
func testRetryUnregisteredTarget(t *testing.T, b queue.Backend) {
	ids := map[string]string{}
	for _, target := range []string{"gone", "kept"} {
		id := enqueue(t, b, &queue.Job{Target: target})
		finish(t, b, leaseOne(t, b, target, id), queue.Outcome{Status: task.Failed, Error: "e"})
		ids[target] = id
	}
	if _, err := b.Invalidate(ctx, []string{"kept"}); err != nil {
		t.Fatal(err)
	}
	if _, err := task.Retry(ctx, b, ids["gone"], ""); !errors.Is(err, task.ErrNotRetryable) || !errors.Is(err, task.ErrTargetNotRegistered) {
		t.Errorf("retry of a task whose target is not registered: %v; want ErrNotRetryable and ErrTargetNotRegistered", err)
	}
	wantStatus(t, b, ids["gone"], task.Failed)
	if _, err := task.Retry(ctx, b, ids["kept"], ""); err != nil {
		t.Errorf("retry of a task whose target is registered: %v", err)
	}
	wantStatus(t, b, ids["kept"], task.Enqueued)
}

func testRetry(t *testing.T, b queue.Backend) {
	n := subscribe(t, b)
	terminal := map[task.Status]func(id string, l *queue.Lease){
		task.Failed:  func(_ string, l *queue.Lease) { finish(t, b, l, queue.Outcome{Status: task.Failed, Error: "e"}) },
		task.Expired: func(_ string, l *queue.Lease) { finish(t, b, l, queue.Outcome{Status: task.Expired, Error: "e"}) },
		task.Invalid: func(_ string, l *queue.Lease) { finish(t, b, l, queue.Outcome{Status: task.Invalid, Error: "e"}) },
		task.Stopped: func(id string, l *queue.Lease) {
			if _, err := task.Stop(ctx, b, id); err != nil {
				t.Fatal(err)
			}
			finish(t, b, l, queue.Outcome{Status: task.Failed})
		},
	}
	for st, end := range terminal {
		target := "retry-" + string(st)
		id := enqueue(t, b, &queue.Job{Target: target})
		l := leaseOne(t, b, target, id)
		finish(t, b, l, queue.Outcome{Status: task.Retrying})
		l = leaseOne(t, b, target, id)
		end(id, l)
		wantStatus(t, b, id, st)
		n.reset()
		tk, err := task.Retry(ctx, b, id, "operator says so")
		if err != nil {
			t.Fatalf("Retry(%s): %v", st, err)
		}
		if tk.Status != task.Enqueued || tk.Attempts != 2 || tk.RetryBase != 2 || !tk.FinishedAt.IsZero() || tk.LastError != "" {
			t.Errorf("retried %s task: %+v", st, tk)
		}
		if e := tk.Events[len(tk.Events)-1]; e.Status != task.Enqueued || e.Detail != "operator says so" {
			t.Errorf("retried %s task: last event %+v", st, e)
		}
		n.waitFor(t, "TaskReady", func(x queue.Notice) bool { return x.Kind == queue.TaskReady })
		l = leaseOne(t, b, target, id)
		if l.Attempt != 3 || l.RetryBase != 2 {
			t.Errorf("lease after retry: attempt %d retryBase %d, want 3 and 2", l.Attempt, l.RetryBase)
		}
		finish(t, b, l, queue.Outcome{Status: task.Succeeded})
		wantStatus(t, b, id, task.Succeeded)
		// Succeeded is final.
		if _, err := task.Retry(ctx, b, id, ""); !errors.Is(err, task.ErrNotRetryable) {
			t.Errorf("Retry(Succeeded): err = %v, want ErrNotRetryable", err)
		}
	}
	// Unfinished tasks cannot be retried.
	queued := enqueue(t, b, &queue.Job{Target: "retry-live"})
	if _, err := task.Retry(ctx, b, queued, ""); !errors.Is(err, task.ErrNotRetryable) {
		t.Errorf("Retry(Enqueued): err = %v, want ErrNotRetryable", err)
	}
	l := leaseOne(t, b, "retry-live", queued)
	if _, err := task.Retry(ctx, b, queued, ""); !errors.Is(err, task.ErrNotRetryable) {
		t.Errorf("Retry(Running): err = %v, want ErrNotRetryable", err)
	}
	finish(t, b, l, queue.Outcome{Status: task.Retrying, ReadyAt: now().Add(time.Hour)})
	if _, err := task.Retry(ctx, b, queued, ""); !errors.Is(err, task.ErrNotRetryable) {
		t.Errorf("Retry(Retrying): err = %v, want ErrNotRetryable", err)
	}
	if _, err := task.Retry(ctx, b, "ghost", ""); !errors.Is(err, task.ErrNotFound) {
		t.Errorf("Retry(unknown): err = %v, want ErrNotFound", err)
	}
}

func testInvalidate(t *testing.T, b queue.Backend) {
	known := enqueue(t, b, &queue.Job{Target: "known"})
	gone := enqueue(t, b, &queue.Job{Target: "gone"})
	goneLater := enqueue(t, b, &queue.Job{Target: "gone", ReadyAt: now().Add(time.Hour)})
	goneRetrying := enqueue(t, b, &queue.Job{Target: "gone2"})
	finish(t, b, leaseOne(t, b, "gone2", goneRetrying), queue.Outcome{Status: task.Retrying, ReadyAt: now().Add(time.Hour)})
	goneRunning := enqueue(t, b, &queue.Job{Target: "gone3"})
	runningLease := leaseOne(t, b, "gone3", goneRunning)
	goneDone := enqueue(t, b, &queue.Job{Target: "gone4"})
	finish(t, b, leaseOne(t, b, "gone4", goneDone), queue.Outcome{Status: task.Succeeded})

	n, err := b.Invalidate(ctx, []string{"known", "other"})
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("Invalidate = %d, want 3", n)
	}
	for _, id := range []string{gone, goneLater, goneRetrying} {
		if tk := wantStatus(t, b, id, task.Invalid); tk.FinishedAt.IsZero() || tk.LastError == "" {
			t.Errorf("invalidated task: finishedAt %v lastError %q", tk.FinishedAt, tk.LastError)
		}
	}
	wantStatus(t, b, known, task.Enqueued)
	wantStatus(t, b, goneRunning, task.Running) // its attempt decides
	wantStatus(t, b, goneDone, task.Succeeded)
	if res := lease(t, b, time.Now().Add(2*time.Hour), queue.LeaseRequest{Target: "gone", Max: 5}); len(res.Leases) != 0 {
		t.Errorf("invalid tasks leased: %v", leaseIDs(res))
	}
	if n, err := b.Invalidate(ctx, []string{"known"}); err != nil || n != 0 {
		t.Errorf("second Invalidate = %d, %v; want 0", n, err)
	}
	finish(t, b, runningLease, queue.Outcome{Status: task.Succeeded})
	// Nothing is known: everything waiting goes.
	if n, err := b.Invalidate(ctx, nil); err != nil || n != 1 {
		t.Errorf("Invalidate(nil) = %d, %v; want 1", n, err)
	}
	wantStatus(t, b, known, task.Invalid)
}

func testReadyNotice(t *testing.T, b queue.Backend) {
	n := subscribe(t, b)
	enqueue(t, b, &queue.Job{Target: "notice"})
	n.waitFor(t, "TaskReady after Enqueue", func(x queue.Notice) bool { return x.Kind == queue.TaskReady })
	n.reset()
	enqueue(t, b, &queue.Job{Target: "notice", ReadyAt: now().Add(time.Hour)})
	n.waitFor(t, "TaskReady after a delayed Enqueue", func(x queue.Notice) bool { return x.Kind == queue.TaskReady })
	n.reset()
	res := lease(t, b, time.Now(), queue.LeaseRequest{Target: "notice", Max: 1})
	finish(t, b, res.Leases[0], queue.Outcome{Status: task.Retrying, ReadyAt: now().Add(time.Minute)})
	n.waitFor(t, "TaskReady after a retrying Finish", func(x queue.Notice) bool { return x.Kind == queue.TaskReady })
}

func testBodies(t *testing.T, b queue.Backend) {
	// A blob body: written in pieces, made durable, enqueued by name,
	// streamed back to the lease.
	blob, err := b.CreateBlob()
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 3<<20+17)
	_, _ = rand.Read(body)
	for rest := body; len(rest) > 0; {
		n := min(len(rest), 64<<10)
		if _, err := blob.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if err := blob.Close(); err != nil {
		t.Fatal(err)
	}
	if err := blob.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	req := request(1)
	req.Body, req.Blob, req.BodySize = nil, blob.Name(), int64(len(body))
	id := enqueue(t, b, &queue.Job{Target: "body", Request: req})
	if tk := get(t, b, id); tk.Request.BodySize != int64(len(body)) {
		t.Errorf("BodySize = %d, want %d", tk.Request.BodySize, len(body))
	}
	l := leaseOne(t, b, "body", id)
	rc, err := b.OpenBody(l)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Error(err)
	}
	if !bytes.Equal(got, body) {
		t.Errorf("blob body: read %d bytes, want the %d written", len(got), len(body))
	}
	finish(t, b, l, queue.Outcome{Status: task.Succeeded})

	// An inline body.
	req = request(2)
	id = enqueue(t, b, &queue.Job{Target: "body", Request: req})
	l = leaseOne(t, b, "body", id)
	rc, err = b.OpenBody(l)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, req.Body) {
		t.Errorf("inline body = %q, want %q", got, req.Body)
	}
	finish(t, b, l, queue.Outcome{Status: task.Succeeded})

	// A blob that is never enqueued can be removed, before or after Close.
	for _, closeFirst := range []bool{false, true} {
		blob, err := b.CreateBlob()
		if err != nil {
			t.Fatal(err)
		}
		_, _ = blob.Write([]byte("abandoned"))
		if closeFirst {
			if err := blob.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if err := blob.Remove(); err != nil {
			t.Errorf("Remove (closed first: %v): %v", closeFirst, err)
		}
	}
}

func testReport(t *testing.T, b queue.Backend) {
	id := enqueue(t, b, &queue.Job{Target: "report"})
	l := leaseOne(t, b, "report", id)
	at := now()
	p := &task.Progress{Percent: 40, Message: "encoding", UpdatedAt: at}
	logs := []task.LogRecord{{Time: at, Level: "INFO", Message: "started", Attempt: 1}, {Time: at, Level: "WARN", Message: "slow disk", Attempt: 1}}
	if err := b.Report(ctx, l, &queue.Report{Progress: p, Logs: logs}); err != nil {
		t.Fatal(err)
	}
	if err := b.Report(ctx, l, &queue.Report{}); err != nil {
		t.Errorf("empty report: %v", err)
	}
	tk := wantStatus(t, b, id, task.Running)
	if tk.Progress == nil || tk.Progress.Percent != 40 || tk.Progress.Message != "encoding" || !tk.Progress.UpdatedAt.Equal(at) {
		t.Errorf("Progress = %+v", tk.Progress)
	}
	if len(tk.Logs) != 2 || tk.Logs[0].Message != "started" || tk.Logs[1].Level != "WARN" || !tk.Logs[1].Time.Equal(at) {
		t.Errorf("Logs = %+v", tk.Logs)
	}
	// Logs accumulate, the latest MaxLogs kept; progress is the latest.
	var many []task.LogRecord
	for i := range queue.MaxLogs {
		many = append(many, task.LogRecord{Time: at, Level: "DEBUG", Message: fmt.Sprint("line ", i), Attempt: 1})
	}
	if err := b.Report(ctx, l, &queue.Report{Logs: many[:10]}); err != nil {
		t.Fatal(err)
	}
	final := &task.Progress{Percent: 100, Message: "done", UpdatedAt: at}
	finish(t, b, l, queue.Outcome{Status: task.Succeeded, Report: &queue.Report{Progress: final, Logs: many[10:]}})
	tk = wantStatus(t, b, id, task.Succeeded)
	if tk.Progress == nil || tk.Progress.Percent != 100 {
		t.Errorf("Progress after finish = %+v", tk.Progress)
	}
	if len(tk.Logs) != queue.MaxLogs || tk.Logs[0].Message != "line 0" || tk.Logs[len(tk.Logs)-1].Message != fmt.Sprint("line ", queue.MaxLogs-1) {
		t.Errorf("%d logs kept, from %q; want the latest %d", len(tk.Logs), tk.Logs[0].Message, queue.MaxLogs)
	}
	// Only the attempt that holds the task reports.
	if err := b.Report(ctx, l, &queue.Report{Progress: p}); !errors.Is(err, task.ErrLeaseLost) {
		t.Errorf("report after finish: err = %v, want ErrLeaseLost", err)
	}
}

func testQuery(t *testing.T, b queue.Backend) {
	for _, id := range []string{"nobody", task.NewID(time.Now())} {
		if _, err := task.Query(ctx, b, id); !errors.Is(err, task.ErrNotFound) {
			t.Errorf("Query(%s): err = %v, want ErrNotFound", id, err)
		}
		if _, err := b.GetTask(ctx, id); !errors.Is(err, task.ErrNotFound) {
			t.Errorf("GetTask(%s): err = %v, want ErrNotFound", id, err)
		}
	}
	for _, id := range []string{"", "a/b", "../x", "1abc"} {
		if _, err := task.Query(ctx, b, id); !errors.Is(err, task.ErrInvalidID) {
			t.Errorf("Query(%q): err = %v, want ErrInvalidID", id, err)
		}
	}
	id := enqueue(t, b, &queue.Job{ID: "q_1", Target: "query"})
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := b.GetTask(cctx, id); !errors.Is(err, context.Canceled) {
		t.Errorf("GetTask with a cancelled context: err = %v", err)
	}
}

// listCase is one listing against the brute-force model.
type listCase struct {
	f        task.Filter
	byCaller bool // the prefix selects caller-chosen IDs
}

func (c listCase) matches(tk *task.Task) bool {
	f := c.f
	return (len(f.Statuses) == 0 || slices.Contains(f.Statuses, tk.Status)) &&
		(f.Target == "" || tk.Target == f.Target) &&
		strings.HasPrefix(tk.ID, f.IDPrefix) &&
		(f.Since.IsZero() || !tk.CreatedAt.Before(f.Since)) &&
		(f.Until.IsZero() || tk.CreatedAt.Before(f.Until))
}

// listAll pages through a listing, checking the shape of every page, and
// returns the tasks in the order listed.
func listAll(t *testing.T, b queue.Backend, f task.Filter, between func()) []*task.Task {
	t.Helper()
	limit := f.Limit
	if limit == 0 {
		limit = task.DefaultLimit
	}
	var all []*task.Task
	for pages := 0; ; pages++ {
		if pages > 1000 {
			t.Fatalf("%+v: paging does not end", f)
		}
		page, err := task.List(ctx, b, f)
		if err != nil {
			t.Fatalf("List(%+v): %v", f, err)
		}
		if len(page.Tasks) > limit {
			t.Fatalf("List(%+v): page of %d, limit %d", f, len(page.Tasks), limit)
		}
		all = append(all, page.Tasks...)
		if page.Next == "" {
			return all
		}
		if len(page.Tasks) < limit {
			t.Fatalf("List(%+v): short page of %d with a next cursor", f, len(page.Tasks))
		}
		if between != nil {
			between()
		}
		f.Cursor = page.Next
	}
}

// checkOrder checks that tasks are listed by creation time in f's order.
// Generated IDs carry milliseconds, so ties within one are in any order.
func checkOrder(t *testing.T, f task.Filter, tasks []*task.Task) {
	t.Helper()
	for i := 1; i < len(tasks); i++ {
		a, b := tasks[i-1].CreatedAt.UnixMilli(), tasks[i].CreatedAt.UnixMilli()
		if (f.Order == task.OldestFirst && a > b) || (f.Order != task.OldestFirst && a < b) {
			t.Fatalf("List(%+v): %s (created %v) listed before %s (created %v)", f,
				tasks[i-1].ID, tasks[i-1].CreatedAt, tasks[i].ID, tasks[i].CreatedAt)
		}
	}
}

// population fills b with tasks of every status on three targets, half of
// them with caller-chosen IDs, and returns them as Query shows them.
func population(t *testing.T, b queue.Backend, rng *mrand.Rand, n int) []*task.Task {
	targets := []string{"list-a", "list-b", "list-c"}
	callerPrefixes := []string{"alpha_", "alpha-", "beta_", "Beta_", "gamma"}
	statuses := task.Statuses
	type plan struct {
		id, target string
		end        task.Status
	}
	var plans []plan
	far := now().Add(24 * time.Hour)
	for i := 0; i < n; {
		// Some in sequence, some in concurrent bursts that share a
		// millisecond.
		burst := 1
		if rng.IntN(3) == 0 {
			burst = 1 + rng.IntN(6)
		}
		burst = min(burst, n-i)
		ps := make([]plan, burst)
		var wg sync.WaitGroup
		for j := range burst {
			p := plan{target: targets[rng.IntN(len(targets))], end: statuses[rng.IntN(len(statuses))]}
			job := &queue.Job{Target: p.target, Request: request(i + j)}
			if rng.IntN(2) == 0 {
				job.ID = fmt.Sprintf("%s%d", callerPrefixes[rng.IntN(len(callerPrefixes))], i+j)
			}
			if p.end == task.Enqueued {
				job.ReadyAt = far // stays queued while the others are leased
			}
			wg.Go(func() {
				r, err := b.Enqueue(ctx, job)
				if err != nil {
					t.Error(err)
				}
				p.id = r.ID
				ps[j] = p
			})
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		plans = append(plans, ps...)
		i += burst
	}
	var reqs []queue.LeaseRequest
	for _, target := range targets {
		reqs = append(reqs, queue.LeaseRequest{Target: target, Max: n})
	}
	res := lease(t, b, time.Now(), reqs...)
	leases := map[string]*queue.Lease{}
	for _, l := range res.Leases {
		leases[l.ID] = l
	}
	var wg sync.WaitGroup
	for _, p := range plans {
		l := leases[p.id]
		if (l == nil) != (p.end == task.Enqueued) {
			t.Fatalf("task %s (to end %s) leased: %v", p.id, p.end, l != nil)
		}
		wg.Go(func() { settle(t, b, p.id, l, p.end, far) })
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	var tasks []*task.Task
	for _, p := range plans {
		tasks = append(tasks, wantStatus(t, b, p.id, p.end))
	}
	return tasks
}

// settle brings a leased task to the status end. It may run on any
// goroutine, so it reports with t.Error.
func settle(t *testing.T, b queue.Backend, id string, l *queue.Lease, end task.Status, far time.Time) {
	fin := func(o queue.Outcome) {
		if _, err := b.Finish(ctx, l, o); err != nil {
			t.Errorf("Finish(%s, %s): %v", id, o.Status, err)
		}
	}
	switch end {
	case task.Enqueued, task.Running:
	case task.Retrying:
		fin(queue.Outcome{Status: task.Retrying, ReadyAt: far})
	case task.Stopping, task.Stopped:
		if _, err := task.Stop(ctx, b, id); err != nil {
			t.Errorf("Stop(%s): %v", id, err)
			return
		}
		if end == task.Stopped {
			fin(queue.Outcome{Status: task.Failed})
		}
	default:
		fin(queue.Outcome{Status: end})
	}
}

func randomFilter(rng *mrand.Rand, tasks []*task.Task) listCase {
	var c listCase
	f := &c.f
	if rng.IntN(2) == 0 {
		for _, st := range task.Statuses {
			if rng.IntN(3) == 0 {
				f.Statuses = append(f.Statuses, st)
			}
		}
	}
	switch rng.IntN(4) {
	case 0:
		f.Target = []string{"list-a", "list-b", "list-c", "list-none"}[rng.IntN(4)]
	case 1:
		f.Target = "list-b"
	}
	switch rng.IntN(6) {
	case 0: // a generated ID's prefix, from coarse (seconds) to exact
		var gen []*task.Task
		for _, tk := range tasks {
			if task.IsGenerated(tk.ID) {
				gen = append(gen, tk)
			}
		}
		if len(gen) > 0 {
			id := gen[rng.IntN(len(gen))].ID
			f.IDPrefix = id[:1+rng.IntN(len(id))]
		}
	case 1: // a caller-chosen ID's prefix
		var named []*task.Task
		for _, tk := range tasks {
			if !task.IsGenerated(tk.ID) {
				named = append(named, tk)
			}
		}
		if len(named) > 0 {
			id := named[rng.IntN(len(named))].ID
			f.IDPrefix = id[:1+rng.IntN(len(id))]
		}
	case 2:
		f.IDPrefix = []string{"alpha", "alpha_", "beta", "B", "zzz", "9", "8ZZ", "0", "01", "a"}[rng.IntN(10)]
	}
	c.byCaller = f.IDPrefix != "" && !(f.IDPrefix[0] >= '0' && f.IDPrefix[0] <= '9')
	bound := func() time.Time {
		at := tasks[rng.IntN(len(tasks))].CreatedAt
		switch rng.IntN(4) {
		case 0:
			return at.Truncate(time.Millisecond)
		case 1:
			return at.Add(time.Duration(rng.IntN(3)-1) * time.Nanosecond)
		}
		return at
	}
	if rng.IntN(3) == 0 {
		f.Since = bound()
	}
	if rng.IntN(3) == 0 {
		f.Until = bound()
	}
	if !f.Since.IsZero() && !f.Until.IsZero() {
		if f.Until.Before(f.Since) {
			f.Since, f.Until = f.Until, f.Since
		}
		if !f.Since.Before(f.Until) {
			f.Until = f.Since.Add(time.Nanosecond)
		}
	}
	switch rng.IntN(3) {
	case 0:
		f.Order = task.OldestFirst
	case 1:
		f.Order = task.NewestFirst
	}
	f.Limit = []int{0, 1, 3, 5, 7, 10, 10, 20, 100}[rng.IntN(9)]
	return c
}

func testListBruteForce(t *testing.T, b queue.Backend) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, seed))
	tasks := population(t, b, rng, 150)
	byID := map[string]*task.Task{}
	for _, tk := range tasks {
		byID[tk.ID] = tk
	}
	// Counts agree with the population.
	want := map[task.Count]bool{}
	n := map[[2]string]int64{}
	for _, tk := range tasks {
		n[[2]string{tk.Target, string(tk.Status)}]++
	}
	for k, v := range n {
		want[task.Count{Target: k[0], Status: task.Status(k[1]), N: v}] = true
	}
	counts, err := task.Counts(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range counts {
		if !want[c] {
			t.Errorf("Counts has %+v, population says %d", c, n[[2]string{c.Target, string(c.Status)}])
		}
		delete(want, c)
	}
	for c := range want {
		t.Errorf("Counts lacks %+v", c)
	}

	cases := []listCase{{}, {f: task.Filter{Order: task.OldestFirst, Limit: 100}}}
	for _, st := range task.Statuses {
		cases = append(cases, listCase{f: task.Filter{Statuses: []task.Status{st}, Limit: 5}})
	}
	for range 200 {
		cases = append(cases, randomFilter(rng, tasks))
	}
	for _, c := range cases {
		got := listAll(t, b, c.f, nil)
		var want []string
		for _, tk := range tasks {
			if c.matches(tk) {
				want = append(want, tk.ID)
			}
		}
		var gotIDs []string
		for _, tk := range got {
			gotIDs = append(gotIDs, tk.ID)
			m := byID[tk.ID]
			if m == nil || tk.Status != m.Status || tk.Target != m.Target || !tk.CreatedAt.Equal(m.CreatedAt) || tk.Attempts != m.Attempts {
				t.Fatalf("List(%+v) returned %+v, Query says %+v", c.f, tk, m)
			}
		}
		if len(slices.Compact(slices.Sorted(slices.Values(gotIDs)))) != len(gotIDs) {
			t.Fatalf("List(%+v) returned a task twice: %v", c.f, gotIDs)
		}
		slices.Sort(want)
		if sorted := slices.Sorted(slices.Values(gotIDs)); !slices.Equal(sorted, want) {
			t.Fatalf("List(%+v):\n got  %v\n want %v", c.f, sorted, want)
		}
		if !c.byCaller {
			checkOrder(t, c.f, got)
		}
		// The first page is the head of the whole listing.
		if c.f.Limit > 0 && len(got) > 0 {
			page, err := task.List(ctx, b, c.f)
			if err != nil {
				t.Fatal(err)
			}
			for i, tk := range page.Tasks {
				if tk.ID != got[i].ID {
					t.Fatalf("List(%+v): first page differs from the paged listing at %d", c.f, i)
				}
			}
		}
	}
}

func testListPagingWhileChanging(t *testing.T, b queue.Backend) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, ^seed))
	const target = "churn"
	far := now().Add(time.Hour)
	var ids []string
	for i := range 50 {
		job := &queue.Job{Target: target, ReadyAt: far}
		if i%3 == 0 {
			job.ID = fmt.Sprintf("churn_%03d", i)
		}
		ids = append(ids, enqueue(t, b, job))
	}
	live := []task.Status{task.Enqueued, task.Retrying, task.Running}
	isLive := func(s task.Status) bool { return slices.Contains(live, s) }
	leases := map[string]*queue.Lease{}
	for _, f := range []task.Filter{
		{Target: target, Statuses: live, Limit: 7},
		{Statuses: live, Limit: 5, Order: task.OldestFirst},
		{Target: target, Limit: 9},
		{IDPrefix: "churn_", Statuses: live, Limit: 2},
		{IDPrefix: "churn_", Statuses: live, Limit: 3, Order: task.OldestFirst},
	} {
		// matchedAlways: matched at every moment; matchedEver: at some.
		matches := func(id string) bool {
			tk := get(t, b, id)
			return (len(f.Statuses) == 0 || isLive(tk.Status)) && strings.HasPrefix(id, f.IDPrefix)
		}
		always, ever := map[string]bool{}, map[string]bool{}
		for _, id := range ids {
			m := matches(id)
			always[id], ever[id] = m, m
		}
		between := func() {
			for range 1 + rng.IntN(6) {
				id := ids[rng.IntN(len(ids))]
				tk := get(t, b, id)
				switch {
				case tk.Status == task.Enqueued && rng.IntN(2) == 0:
					// Lease everything ready at a far time: Running, still live.
					res := lease(t, b, far.Add(time.Minute), queue.LeaseRequest{Target: target, Max: 2})
					for _, l := range res.Leases {
						leases[l.ID] = l
					}
				case tk.Status == task.Running && rng.IntN(2) == 0:
					finish(t, b, leases[id], queue.Outcome{Status: task.Retrying, ReadyAt: far})
				case tk.Status == task.Running:
					finish(t, b, leases[id], queue.Outcome{Status: task.Succeeded})
				case tk.Status == task.Enqueued || tk.Status == task.Retrying:
					if _, err := task.Stop(ctx, b, id); err != nil {
						t.Fatal(err)
					}
				case tk.Status.Retryable():
					if _, err := task.Retry(ctx, b, id, ""); err != nil {
						t.Fatal(err)
					}
				}
				if rng.IntN(4) == 0 {
					enqueue(t, b, &queue.Job{Target: target, ReadyAt: far}) // new ones may or may not show
				}
			}
			for _, id := range ids {
				m := matches(id)
				always[id] = always[id] && m
				ever[id] = ever[id] || m
			}
		}
		got := listAll(t, b, f, between)
		seen := map[string]bool{}
		for _, tk := range got {
			if seen[tk.ID] {
				t.Fatalf("List(%+v) returned %s twice while tasks changed", f, tk.ID)
			}
			seen[tk.ID] = true
			if _, old := ever[tk.ID]; old && !ever[tk.ID] {
				t.Fatalf("List(%+v) returned %s, which never matched", f, tk.ID)
			}
		}
		for _, id := range ids {
			if always[id] && !seen[id] {
				t.Fatalf("List(%+v) skipped %s, which matched throughout", f, id)
			}
		}
		if !strings.HasPrefix(f.IDPrefix, "churn_") {
			checkOrder(t, f, got)
		}
	}
}

func testListBadCursor(t *testing.T, b queue.Backend) {
	enqueue(t, b, &queue.Job{Target: "cur"})
	for _, cur := range []string{"!!!", "not a cursor", "AAAA"} {
		if _, err := task.List(ctx, b, task.Filter{Cursor: cur}); !errors.Is(err, task.ErrInvalidFilter) {
			t.Errorf("List(cursor %q): err = %v, want ErrInvalidFilter", cur, err)
		}
	}
}
