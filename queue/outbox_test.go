package queue_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

func pending(t *testing.T, q *queue.Queue, at time.Time) []*queue.Delivery {
	t.Helper()
	ds, _, err := q.PendingDeliveries(ctx, at, 1000, func(string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// clockedQueue is a queue on a clock that moves only when told, keeping
// finished tasks a minute and purging only when asked.
func clockedQueue(t *testing.T) (*queue.Queue, *clock) {
	clk := newClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	return testutil.OpenQueue(t, &queue.Options{Now: clk.Now, Retention: time.Minute, PurgeInterval: 24 * time.Hour}), clk
}

// A stop, a retry and a stop of one task at one instant (in one commit,
// or with a clock that does not move): the retry supersedes the first
// stop's delivery, and the second stop's is the one outbox entry left.
func TestRetrySupersedesDeliveryOfTheSameInstant(t *testing.T) {
	t.Parallel()
	q, clk := clockedQueue(t)
	q.SetDestinations("d", false, true)
	id := enqueue(t, q, &queue.Job{Target: "d", ReadyAt: clk.Now().Add(time.Hour)})
	for _, f := range []func() (*task.Task, error){
		func() (*task.Task, error) { return q.StopTask(ctx, id) },
		func() (*task.Task, error) { return q.RetryTask(ctx, id, "again") },
		func() (*task.Task, error) { return q.StopTask(ctx, id) },
	} {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	ds := pending(t, q, clk.Now().Add(time.Second))
	if len(ds) != 1 {
		t.Fatalf("%d outbox entries; want the second stop's only", len(ds))
	}
	if err := q.FinishDelivery(ctx, ds[0], queue.DeliveryResult{}); err != nil {
		t.Fatal(err)
	}
	got := status(t, q, id).Deliveries
	if len(got) != 2 || got[0].Status != task.DeliverySuperseded || got[1].Status != task.DeliveryDelivered {
		t.Errorf("deliveries %+v; want the first superseded, the second delivered", got)
	}
	if err := q.Check(); err != nil {
		t.Error(err)
	}
	clk.Advance(time.Hour)
	if n, err := q.Purge(ctx); err != nil || n != 1 {
		t.Errorf("Purge = %d, %v; want the task purged", n, err)
	}
}

// The same from concurrent callers, whose stops and retries share
// commits with the real clock.
func TestConcurrentStopsAndRetriesKeepTheOutboxInStep(t *testing.T) {
	t.Parallel()
	q := testutil.OpenQueue(t, nil)
	q.SetDestinations("d", false, true)
	for range 50 {
		id := enqueue(t, q, &queue.Job{Target: "d", ReadyAt: time.Now().Add(time.Hour)})
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() { _, _ = q.StopTask(ctx, id) })
			wg.Go(func() { _, _ = q.RetryTask(ctx, id, "again") })
		}
		wg.Wait()
		if err := q.Check(); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range pending(t, q, time.Now().Add(time.Hour)) {
		if err := q.FinishDelivery(ctx, d, queue.DeliveryResult{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Check(); err != nil {
		t.Error(err)
	}
}

// Purge looks past finished tasks it must keep (their deliveries are
// pending), however many there are, to the ones it may delete.
func TestPurgeGoesPastTasksWithPendingDeliveries(t *testing.T) {
	t.Parallel()
	q, clk := clockedQueue(t)
	q.SetDestinations("owed", false, true)
	stopAll := func(target string, n int) {
		var wg sync.WaitGroup
		for w := range 32 {
			wg.Go(func() {
				for i := w; i < n; i += 32 {
					r, err := q.Enqueue(ctx, &queue.Job{Target: target, ReadyAt: clk.Now().Add(time.Hour), Request: request(nil)})
					if err == nil {
						_, err = q.StopTask(ctx, r.ID)
					}
					if err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	stopAll("owed", 600) // finished first, each owing a delivery
	clk.Advance(time.Millisecond)
	stopAll("free", 10)
	clk.Advance(time.Hour)
	if n, err := q.Purge(ctx); err != nil || n != 10 {
		t.Errorf("Purge = %d, %v; want the 10 tasks that owe nothing", n, err)
	}
	if err := q.Check(); err != nil {
		t.Error(err)
	}
}

// An outbox entry written before entries named their finish (a 25-byte
// key) is still read, delivered and recorded, its finish unknown.
func TestOutboxEntryWithoutFinish(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "old.db")
	q, err := queue.Open(path, &queue.Options{Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	q.SetDestinations("d", false, true)
	id := enqueue(t, q, &queue.Job{Target: "d", ReadyAt: time.Now().Add(time.Hour)})
	if _, err := q.StopTask(ctx, id); err != nil {
		t.Fatal(err)
	}
	editClosed(t, q, path, func(tx *bolt.Tx) error {
		ob := tx.Bucket([]byte("outbox"))
		k, v := ob.Cursor().First()
		if len(k) != 33 {
			return fmt.Errorf("outbox key of %d bytes; want 33", len(k))
		}
		old, val := bytes.Clone(k[:25]), bytes.Clone(v)
		if err := ob.Delete(k); err != nil {
			return err
		}
		return ob.Put(old, val)
	})
	q = openAt(t, path, nil)
	ds := pending(t, q, time.Now().Add(time.Minute))
	if len(ds) != 1 || ds[0].TaskID != id || !ds[0].FinishedAt.IsZero() {
		t.Fatalf("pending deliveries %+v; want the old entry, its finish unknown", ds)
	}
	if err := q.FinishDelivery(ctx, ds[0], queue.DeliveryResult{}); err != nil {
		t.Fatal(err)
	}
	if d := status(t, q, id).Deliveries; len(d) != 1 || d[0].Status != task.DeliveryDelivered {
		t.Errorf("deliveries %+v; want it delivered", d)
	}
}
