package destination_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/destination/destinationtest"
	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
)

// chain is a real scheduler whose target "receive" collects the records
// that a Target destination submits to it, by follow-up task ID.
type chain struct {
	sched *invoke.Scheduler

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every change below
	submitted map[string]bool
	got       map[string]destination.Record
	bad       []string
}

func newChain(t *testing.T) *chain {
	t.Helper()
	q := testutil.OpenQueue(t, &queue.Options{Logger: slog.New(slog.DiscardHandler)})
	s, err := invoke.New(q, &invoke.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	c := &chain{sched: s, changed: make(chan struct{}), submitted: map[string]bool{}, got: map[string]destination.Record{}}
	if err := s.Register("receive", http.HandlerFunc(c.serve), nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func (c *chain) update(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f()
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *chain) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var rec destination.Record
	if err == nil {
		err = json.Unmarshal(body, &rec)
	}
	c.update(func() {
		if err != nil {
			c.bad = append(c.bad, err.Error())
			return
		}
		c.got[r.Header.Get(invoke.HeaderRequestID)] = rec
	})
}

// Submit implements destination.Submitter: it notes the follow-up tasks
// that the destination started.
func (c *chain) Submit(ctx context.Context, target string, r *http.Request) (string, error) {
	id, err := c.sched.Submit(ctx, target, r)
	if err == nil {
		c.update(func() { c.submitted[id] = true })
	}
	return id, err
}

// received waits until every submitted follow-up task has delivered its
// record to the receiving target.
func (c *chain) received(t *testing.T) []destination.Record {
	t.Helper()
	deadline := time.After(destinationtest.Patience)
	for {
		c.mu.Lock()
		var recs []destination.Record
		missing := 0
		for id := range c.submitted {
			if rec, ok := c.got[id]; ok {
				recs = append(recs, rec)
			} else {
				missing++
			}
		}
		if len(c.bad) > 0 {
			t.Errorf("the receiving target got bodies that are not records: %v", c.bad)
		}
		changed := c.changed
		c.mu.Unlock()
		if missing == 0 {
			return recs
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%d follow-up tasks did not reach the receiving target within %s", missing, destinationtest.Patience)
		}
	}
}

var _ destination.Submitter = (*chain)(nil)

func TestTargetConformance(t *testing.T) {
	t.Parallel()
	destinationtest.Run(t, func(t *testing.T) (destination.Destination, func() []destination.Record) {
		c := newChain(t)
		return destination.Target(c, "receive"), func() []destination.Record { return c.received(t) }
	})
}

// A repeated delivery of one record starts the follow-up once, thanks to
// the idempotency key; another condition for the same task is another
// follow-up, and so is the same condition again after the task was
// retried (another finish, with more attempts).
func TestTargetIdempotent(t *testing.T) {
	t.Parallel()
	c := newChain(t)
	d := destination.Target(c, "receive")
	finished := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := destination.Record{Version: destination.Version, Timestamp: finished, RequestContext: destination.RequestContext{
		RequestID: "01M8A5JMZP442HFYP7HK6MA4SD", FunctionArn: "first", Condition: destination.RetriesExhausted, ApproximateInvokeCount: 4,
	}}
	for range 3 {
		if err := d.Deliver(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	again := rec
	again.Timestamp, again.RequestContext.ApproximateInvokeCount = finished.Add(time.Hour), 8
	for range 2 {
		if err := d.Deliver(context.Background(), again); err != nil {
			t.Fatalf("the next finish of a retried task: %v", err)
		}
	}
	rec.RequestContext.Condition = destination.Success
	if err := d.Deliver(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	got := c.received(t)
	seen := []string{}
	for _, r := range got {
		seen = append(seen, fmt.Sprintf("%s/%d", r.RequestContext.Condition, r.RequestContext.ApproximateInvokeCount))
	}
	slices.Sort(seen)
	if want := []string{"RetriesExhausted/4", "RetriesExhausted/8", "Success/4"}; !slices.Equal(seen, want) {
		t.Errorf("follow-ups received %v; want one per finish and condition, %v", seen, want)
	}
}
