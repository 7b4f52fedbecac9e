package invoke_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
)

// benchProducers is how many goroutines enqueue concurrently in
// BenchmarkThroughput, as that many HTTP connections would.
const benchProducers = 64

func benchQueue(b *testing.B) *queue.Queue {
	return testutil.OpenQueue(b, &queue.Options{Logger: slog.New(slog.DiscardHandler)})
}

// BenchmarkThroughput runs b.N no-op tasks end to end (enqueue by
// concurrent producers, lease, replay, finish) through a target with the
// given Concurrency, and reports tasks/s. The clock stops when Run has
// returned, so every finish is durable.
//
//	go test -run '^$' -bench Throughput -benchtime 3s ./invoke/
func BenchmarkThroughput(b *testing.B) {
	for _, workers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			q := benchQueue(b)
			s, err := invoke.New(q, &invoke.Options{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			n := int64(b.N)
			var ran atomic.Int64
			all := make(chan struct{})
			err = s.Register("noop", http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
				if ran.Add(1) == n {
					close(all)
				}
			}), &invoke.Policy{Concurrency: workers})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			stopped := make(chan error, 1)
			go func() { stopped <- s.Run(ctx) }()
			req := getRequest("/noop")

			b.ResetTimer()
			var next atomic.Int64
			var failed atomic.Bool
			var wg sync.WaitGroup
			for range benchProducers {
				wg.Go(func() {
					for next.Add(1) <= n && !failed.Load() {
						if _, err := s.Enqueue(ctx, &queue.Job{Target: "noop", Request: req}); err != nil {
							b.Error(err)
							failed.Store(true)
						}
					}
				})
			}
			wg.Wait()
			if !failed.Load() {
				<-all
			}
			cancel()
			if err := <-stopped; err != nil {
				b.Error(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
		})
	}
}

// BenchmarkEnqueueToStart measures, on an idle queue, the time from
// Enqueue returning to the handler being entered, and reports its p50 and
// p99. Each task is finished before the next is enqueued.
//
//	go test -run '^$' -bench EnqueueToStart -benchtime 3s ./invoke/
func BenchmarkEnqueueToStart(b *testing.B) {
	q := benchQueue(b)
	w := watch(q)
	s, err := invoke.New(w, &invoke.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	entered := make(chan time.Time, 1)
	err = s.Register("noop", http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		entered <- time.Now()
	}), nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-stopped; err != nil {
			b.Error(err)
		}
	}()
	req := getRequest("/noop")
	lat := make([]time.Duration, 0, b.N)

	b.ResetTimer()
	for range b.N {
		if _, err := s.Enqueue(ctx, &queue.Job{Target: "noop", Request: req}); err != nil {
			b.Fatal(err)
		}
		enqueued := time.Now()
		start := <-entered
		lat = append(lat, max(start.Sub(enqueued), 0))
		if f := <-w.finished; f.err != nil {
			b.Fatal(f.err)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
}
