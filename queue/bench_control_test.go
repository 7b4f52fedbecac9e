package queue_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// controlTasks is the size of the baseline database that the control
// benchmarks compare the 1M backlog with: large enough that Stop never
// runs out of queued tasks within a benchmark run.
const controlTasks = 100_000

// listFunc lists the first page of f, checking it is full.
func listFunc(q *queue.Queue, f task.Filter) func(n int) (time.Duration, error) {
	ctx := context.Background()
	return func(n int) (time.Duration, error) {
		start := time.Now()
		for range n {
			p, err := task.List(ctx, q, f)
			if err != nil {
				return 0, err
			}
			if len(p.Tasks) != task.DefaultLimit || p.Next == "" {
				return 0, fmt.Errorf("list %+v: %d tasks, next %q", f, len(p.Tasks), p.Next)
			}
		}
		return time.Since(start), nil
	}
}

// stopFunc stops queued tasks of q, each once: a stride through the first
// tasks keys that is coprime with tasks visits every one before repeating.
func stopFunc(q *queue.Queue, tasks int) func(n int) (time.Duration, error) {
	ctx, i := context.Background(), 0
	return func(n int) (time.Duration, error) {
		start := time.Now()
		for range n {
			id := benchKey(i * 7919 % tasks).String()
			i++
			t, err := task.Stop(ctx, q, id)
			if err != nil {
				return 0, err
			}
			if t.Status != task.Stopped {
				return 0, fmt.Errorf("stop %s: %s", id, t.Status)
			}
		}
		return time.Since(start), nil
	}
}

// BenchmarkBacklogControl: the first page of List by status and by target,
// and Stop, on the 1M backlog, each interleaved with the same on a
// database of controlTasks queued tasks (x-vs-empty is the ratio to it).
func BenchmarkBacklogControl(b *testing.B) {
	big := backlog.open(b)
	defer big.Close()
	small := openBenchQueue(b)
	if err := queue.FillForBench(small, controlTasks, fillPerTx, benchTarget, benchRequest(), benchKey); err != nil {
		b.Fatal(err)
	}
	byStatus := task.Filter{Statuses: []task.Status{task.Enqueued}}
	byTarget := task.Filter{Target: benchTarget}
	b.Run("ListByStatus/backlog=1M", func(b *testing.B) { interleave(b, listFunc(big, byStatus), listFunc(small, byStatus)) })
	b.Run("ListByTarget/backlog=1M", func(b *testing.B) { interleave(b, listFunc(big, byTarget), listFunc(small, byTarget)) })
	// One pair of stop funcs for every round of b.N, so no task is stopped twice.
	stopBig, stopSmall := stopFunc(big, backlogSize), stopFunc(small, controlTasks)
	stopped := 0
	b.Run("Stop/backlog=1M", func(b *testing.B) {
		if stopped += b.N; stopped > controlTasks {
			b.Fatalf("%d stops exceed the %d tasks there are to stop", stopped, controlTasks)
		}
		interleave(b, stopBig, stopSmall)
	})
}
