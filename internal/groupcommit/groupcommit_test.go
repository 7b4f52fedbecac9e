package groupcommit_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/offload-go/offload/internal/groupcommit"
	"github.com/offload-go/offload/task"
)

func TestBatches(t *testing.T) {
	t.Parallel()
	release, holding := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	var batches [][]int
	var afters int
	c := groupcommit.Start(func(ops []int) (func(), error) {
		mu.Lock()
		first := len(batches) == 0
		batches = append(batches, ops)
		mu.Unlock()
		if first {
			close(holding)
			<-release // hold the first commit while the others queue up
		}
		return func() { mu.Lock(); afters++; mu.Unlock() }, nil
	})
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := c.Submit(context.Background(), 0); err != nil {
			t.Error(err)
		}
	})
	<-holding // the first commit holds op 0
	for i := 1; i <= 10; i++ {
		wg.Go(func() {
			if err := c.Submit(context.Background(), i); err != nil {
				t.Error(err)
			}
		})
	}
	close(release)
	wg.Wait()
	c.Close()
	total := 0
	for _, b := range batches {
		total += len(b)
	}
	if total != 11 || len(batches) >= 11 {
		t.Errorf("batches %v: want 11 ops in fewer than 11 commits", batches)
	}
	if afters != len(batches) {
		t.Errorf("after ran %d times for %d commits", afters, len(batches))
	}
	if err := c.Submit(context.Background(), 99); !errors.Is(err, task.ErrClosed) {
		t.Errorf("Submit after Close: %v; want task.ErrClosed", err)
	}
}

func TestCommitErrorReachesEverySubmitter(t *testing.T) {
	t.Parallel()
	boom := errors.New("disk full")
	c := groupcommit.Start(func([]string) (func(), error) { return nil, boom })
	defer c.Close()
	if err := c.Submit(context.Background(), "x"); !errors.Is(err, boom) {
		t.Errorf("Submit: %v; want %v", err, boom)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Submit(ctx, "y"); !errors.Is(err, context.Canceled) {
		t.Errorf("Submit with a cancelled ctx: %v; want context.Canceled", err)
	}
}
