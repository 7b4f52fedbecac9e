package invoke_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// heldLease holds the result of the first Lease, after the queue has
// committed it, until the test releases it.
type heldLease struct {
	queue.Backend
	once      sync.Once
	committed chan struct{}
	release   chan struct{}
}

func (h *heldLease) Lease(ctx context.Context, now time.Time, reqs []queue.LeaseRequest) (*queue.LeaseResult, error) {
	res, err := h.Backend.Lease(ctx, now, reqs)
	h.once.Do(func() {
		close(h.committed)
		<-h.release
	})
	return res, err
}

// A Lease that found nothing must not put its target to sleep when a task
// became ready after that Lease was asked for: the task's ready notice may
// arrive before the empty result does.
func TestTaskReadyWhileLeaseInFlight(t *testing.T) {
	q := openQueue(t)
	held := &heldLease{Backend: q, committed: make(chan struct{}), release: make(chan struct{})}
	s, err := invoke.New(held, &invoke.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan string, 1)
	err = s.Register("t", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, _ := task.FromContext(r.Context())
		ran <- a.ID
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer runScheduler(t, s)()

	<-held.committed // the first Lease found the queue empty
	rc, err := s.Enqueue(context.Background(), &queue.Job{Target: "t", Request: getRequest("/")})
	if err != nil {
		t.Fatal(err)
	}
	// Any later commit runs after the enqueue's ready notice was delivered.
	if _, err := q.StopTask(context.Background(), "no-such-task"); !errors.Is(err, task.ErrNotFound) {
		t.Fatalf("StopTask = %v, want ErrNotFound", err)
	}
	close(held.release)

	select {
	case id := <-ran:
		if id != rc.ID {
			t.Fatalf("ran %s, want %s", id, rc.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the task enqueued while a Lease was in flight never ran")
	}
}
