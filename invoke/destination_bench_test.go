package invoke_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

const dstBenchProducers = 64

func dstBenchQueue(b *testing.B) *queue.Queue {
	b.Helper()
	q, err := queue.Open(filepath.Join(b.TempDir(), "offload.db"), &queue.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	return q
}

// dstParallel runs f(i) for i in [0, n) on dstBenchProducers goroutines.
func dstParallel(b testing.TB, n int, f func(i int) error) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Bool
	for range dstBenchProducers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n && !failed.Load(); i = int(next.Add(1)) - 1 {
				if err := f(i); err != nil {
					b.Error(err)
					failed.Store(true)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() {
		b.FailNow()
	}
}

// dstFinished fills q with n tasks of target "work" that have succeeded
// and owe an onSuccess delivery, written straight through the queue.
func dstFinished(b testing.TB, q *queue.Queue, n int) {
	b.Helper()
	q.SetDestinations("work", true, false)
	req := dstRequest(`{"job":"benchmark"}`)
	dstParallel(b, n, func(int) error {
		_, err := q.Enqueue(context.Background(), &queue.Job{Target: "work", Request: req})
		return err
	})
	res, err := q.Lease(context.Background(), time.Now(), []queue.LeaseRequest{{Target: "work", Max: n}})
	if err != nil {
		b.Fatal(err)
	}
	if len(res.Leases) != n {
		b.Fatalf("leased %d of %d", len(res.Leases), n)
	}
	resp := &task.Response{StatusCode: http.StatusOK, Body: []byte("ok"), BodySize: 2}
	dstParallel(b, n, func(i int) error {
		_, err := q.Finish(context.Background(), res.Leases[i], queue.Outcome{Status: task.Succeeded, Response: resp})
		return err
	})
}

// BenchmarkDestinationDelivery measures how fast a scheduler drains an
// outbox of 10k finished tasks into a Func destination: each op delivers
// all 10k (read the task, build the record, call the Func, record the
// delivery durably), and reports records/s. Filling the outbox is not
// timed. The clock stops when Run has returned, so every delivery is
// recorded.
//
//	go test -run '^$' -bench Destination -benchtime 2s ./invoke/
func BenchmarkDestinationDelivery(b *testing.B) {
	const tasks = 10_000
	for _, conc := range []int{invoke.DefaultDeliveryConcurrency, 64} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			var elapsed time.Duration
			b.StopTimer()
			for range b.N {
				q := dstBenchQueue(b)
				dstFinished(b, q, tasks)
				s, err := invoke.New(q, &invoke.Options{Logger: slog.New(slog.DiscardHandler), DeliveryConcurrency: conc})
				if err != nil {
					b.Fatal(err)
				}
				var got atomic.Int64
				all := make(chan struct{})
				sink := destination.Func(func(ctx context.Context, rec destination.Record) error {
					if got.Add(1) == tasks {
						close(all)
					}
					return nil
				})
				if err := s.Register("work", http.NotFoundHandler(), &invoke.Policy{OnSuccess: sink}); err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				stopped := make(chan error, 1)

				b.StartTimer()
				start := time.Now()
				go func() { stopped <- s.Run(ctx) }()
				select {
				case <-all:
				case <-time.After(5 * time.Minute):
					b.Fatalf("%d of %d records delivered in 5 minutes", got.Load(), tasks)
				}
				cancel()
				if err := <-stopped; err != nil {
					b.Error(err)
				}
				elapsed += time.Since(start)
				b.StopTimer()

				if p, _, err := q.PendingDeliveries(context.Background(), time.Now(), 1, func(string) bool { return false }); err != nil || len(p) != 0 {
					b.Fatalf("outbox not drained: %d left, %v", len(p), err)
				}
				if err := q.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(tasks*b.N)/elapsed.Seconds(), "records/s")
			b.ReportMetric(float64(elapsed.Nanoseconds())/float64(tasks*b.N), "ns/record")
		})
	}
}

// dstBenchEndToEnd runs n no-op tasks end to end (concurrent enqueue,
// lease, replay, finish) on a fresh queue and returns how long they took,
// until Run returned. With a Func OnSuccess, each finish also writes an
// outbox entry and the run lasts until every record is delivered and
// recorded.
func dstBenchEndToEnd(b *testing.B, n int, withDestination bool) time.Duration {
	b.Helper()
	q := dstBenchQueue(b)
	defer q.Close()
	s, err := invoke.New(q, &invoke.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	var ran, delivered atomic.Int64
	all := make(chan struct{})
	p := &invoke.Policy{Concurrency: 64}
	handler := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		if ran.Add(1) == int64(n) && !withDestination {
			close(all)
		}
	})
	if withDestination {
		p.OnSuccess = destination.Func(func(ctx context.Context, rec destination.Record) error {
			if delivered.Add(1) == int64(n) {
				close(all)
			}
			return nil
		})
	}
	if err := s.Register("noop", handler, p); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	req := dstNoopRequest()

	start := time.Now()
	go func() { stopped <- s.Run(ctx) }()
	dstParallel(b, n, func(int) error {
		_, err := s.Enqueue(ctx, &queue.Job{Target: "noop", Request: req})
		return err
	})
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d tasks ran, %d delivered, in 5 minutes", ran.Load(), n, delivered.Load())
	}
	cancel()
	if err := <-stopped; err != nil {
		b.Error(err)
	}
	return time.Since(start)
}

func dstNoopRequest() *reqcodec.Request {
	return &reqcodec.Request{Method: http.MethodGet, RequestURI: "/noop", Proto: "HTTP/1.1", Host: "example.com"}
}

// BenchmarkDestinationOutbox measures the cost of a destination per task:
// each op runs 2,000 no-op tasks end to end without a destination, then
// 2,000 with a Func OnSuccess (an outbox entry written in each finish's
// transaction, then the delivery read, sent and recorded), each on a
// fresh queue, and reports both throughputs, their ratio and the extra
// time per task. The two alternate within the run so that they see the
// same machine.
//
//	go test -run '^$' -bench Destination -benchtime 2s ./invoke/
func BenchmarkDestinationOutbox(b *testing.B) {
	const tasks = 2000
	var none, with time.Duration
	for range b.N {
		none += dstBenchEndToEnd(b, tasks, false)
		with += dstBenchEndToEnd(b, tasks, true)
	}
	n := float64(tasks * b.N)
	b.ReportMetric(n/none.Seconds(), "tasks/s-none")
	b.ReportMetric(n/with.Seconds(), "tasks/s-func")
	b.ReportMetric(with.Seconds()/none.Seconds(), "time-ratio")
	b.ReportMetric(float64((with-none).Microseconds())/n, "extra-µs/task")
}
