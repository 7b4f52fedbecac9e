package invoke_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// aheadBundle runs target "work" (Concurrency 1) whose handler reports the
// task it runs on entered and returns once release is called; run and
// lease are its measured averages, which decide how many tasks it leases
// ahead. It enqueues two tasks and returns when the first is running and
// the scheduler has settled, the second leased ahead or not.
func aheadBundle(t *testing.T, run, lease time.Duration) (b *testBundle, first, second string, entered chan string, release func()) {
	b = setup(t, &invoke.Options{ShutdownTimeout: time.Hour})
	entered = make(chan string, 4)
	released := make(chan struct{})
	release = sync.OnceFunc(func() { close(released) })
	b.register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, _ := task.FromContext(r.Context())
		entered <- a.ID
		<-released
	}), &invoke.Policy{Concurrency: 1})
	invoke.SetAverages(b.sched, "work", run, lease)
	b.start()
	t.Cleanup(release) // before Run is stopped, should the test fail first
	first = b.enqueue(&queue.Job{Target: "work"})
	if id := <-entered; id != first {
		t.Fatalf("entered %s, want %s", id, first)
	}
	second = b.enqueue(&queue.Job{Target: "work"})
	synctest.Wait()
	return b, first, second, entered, release
}

// bothRunAfterRelease releases the first task's handler and checks that the
// second then runs, and both succeed once each.
func bothRunAfterRelease(t *testing.T, b *testBundle, first, second string, entered chan string, release func()) {
	t.Helper()
	release()
	if id := <-entered; id != second {
		t.Fatalf("entered %s, want %s", id, second)
	}
	synctest.Wait()
	b.wantStatus(first, task.Succeeded, 1)
	b.wantStatus(second, task.Succeeded, 1)
}

func noneEntered(t *testing.T, entered chan string) {
	t.Helper()
	select {
	case id := <-entered:
		t.Fatalf("task %s entered its handler", id)
	default:
	}
}

// A target whose handlers return sooner than a Lease commits leases the
// next task while its only slot is taken; the task waits for the slot,
// and Stop hands it back at once, unrun and uncounted, while the running
// attempt is let finish.
func TestLeaseAheadHandedBackAtStop(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b, first, second, entered, release := aheadBundle(t, time.Microsecond, time.Millisecond)
		b.wantStatus(second, task.Running, 1) // leased ahead
		noneEntered(t, entered)

		stopped := make(chan error, 1)
		go func() { stopped <- b.sched.Stop(context.Background()) }()
		synctest.Wait()
		b.wantStatus(second, task.Enqueued, 0)
		b.wantStatus(first, task.Running, 1)
		release()
		if err := <-stopped; err != nil {
			t.Fatalf("Stop: %v", err)
		}
		b.wantStatus(first, task.Succeeded, 1)
		noneEntered(t, entered)
	})
}

// A task leased ahead and stopped while the slot is still taken ends
// Stopped at once, without entering its handler.
func TestLeaseAheadStoppedBeforeStart(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b, first, second, entered, release := aheadBundle(t, time.Microsecond, time.Millisecond)
		if _, err := task.Stop(context.Background(), b.q, second); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		b.wantStatus(second, task.Stopped, 1)
		b.wantStatus(first, task.Running, 1)
		release()
		synctest.Wait()
		b.wantStatus(first, task.Succeeded, 1)
		noneEntered(t, entered)
	})
}

// A task leased ahead whose slot does not free in time is handed back,
// uncounted, and the target leases no more ahead: the task waits Enqueued,
// where another replica could take it, and runs once the slot frees.
func TestLeaseAheadHandedBackWhenNoSlotFrees(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b, first, second, entered, release := aheadBundle(t, time.Microsecond, time.Millisecond)
		b.wantStatus(second, task.Running, 1)
		time.Sleep(time.Second) // on the bubble's clock, once all else waits
		synctest.Wait()
		leases := 0
		for _, e := range b.wantStatus(second, task.Enqueued, 0).Events {
			if e.Status == task.Running {
				leases++
			}
		}
		if leases != 1 {
			t.Errorf("second task leased %d times while the slot stayed taken; want once", leases)
		}
		noneEntered(t, entered)
		bothRunAfterRelease(t, b, first, second, entered, release)
	})
}

// A target whose handlers take longer than a Lease leases nothing ahead:
// the next task stays Enqueued until the slot frees, then runs.
func TestSlowTargetLeasesNothingAhead(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b, first, second, entered, release := aheadBundle(t, time.Second, time.Millisecond)
		b.wantStatus(second, task.Enqueued, 0)
		bothRunAfterRelease(t, b, first, second, entered, release)
	})
}
