package postgres_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/queue/postgres"
)

// The benchmarks of issue 10, against the bbolt queue in the same run.
// Run them with
//
//	bash .ci/postgres -run '^$' -bench . -benchtime 3s
//
// After the run a table gives each PostgreSQL figure next to bbolt's and
// their ratio.

// benchResults keeps the figure of each benchmark's final run (at the
// final b.N) for the table, one per repetition (-count).
var benchResults = struct {
	mu sync.Mutex
	m  map[string][]float64
}{m: map[string][]float64{}}

func keep(b *testing.B, v float64) {
	benchResults.mu.Lock()
	defer benchResults.mu.Unlock()
	// b.Name() is the same for every run of a benchmark; a run at a
	// larger b.N replaces the run before it within one repetition.
	name := b.Name()
	runs := benchResults.m[name]
	if b.N > 1 && len(runs) > 0 && lastN[name] < b.N {
		runs = runs[:len(runs)-1]
	}
	lastN[name] = b.N
	benchResults.m[name] = append(runs, v)
}

var lastN = map[string]int{}

// printRatios prints, for every benchmark named .../postgres..., its
// median beside the median of the .../bbolt one of the same parent, their
// ratio, and the range of the ratios of the repetitions, which ran
// interleaved (bbolt, then PostgreSQL, then bbolt again...).
func printRatios() {
	benchResults.mu.Lock()
	defer benchResults.mu.Unlock()
	var names []string
	for name := range benchResults.m {
		if strings.Contains(name, "/postgres") {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return
	}
	slices.Sort(names)
	fmt.Println("\nPostgreSQL against bbolt, same run (per second; medians of the repetitions):")
	for _, name := range names {
		parent := name[:strings.LastIndex(name, "/")]
		base, pg := benchResults.m[parent+"/bbolt"], benchResults.m[name]
		if len(base) == 0 {
			continue
		}
		lo, hi := math.Inf(1), math.Inf(-1)
		for i := range min(len(base), len(pg)) {
			lo, hi = min(lo, pg[i]/base[i]), max(hi, pg[i]/base[i])
		}
		fmt.Printf("  %-40s %8.0f   bbolt %8.0f   ratio %.2f (%.2f to %.2f over %d)\n",
			name, median(pg), median(base), median(pg)/median(base), lo, hi, min(len(base), len(pg)))
	}
}

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// benchRequest is a 1 KiB POST with the headers a curl client sends, as
// in the bbolt queue's benchmarks.
func benchRequest() *reqcodec.Request {
	body := make([]byte, 1<<10)
	for i := range body {
		body[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[i%36]
	}
	return &reqcodec.Request{
		Method: http.MethodPost, RequestURI: "/videos/clip-0001/transcode?preset=720p", Proto: "HTTP/1.1",
		Host: "api.example.com", RemoteAddr: "203.0.113.7:52114",
		Header: http.Header{
			"Accept": {"*/*"}, "Content-Length": {"1024"}, "Content-Type": {"application/json"},
			"User-Agent": {"curl/8.5.0"}, "X-Fc-Invocation-Type": {"Async"},
		},
		Pattern: "POST /videos/{name}/transcode", PathValues: []reqcodec.KV{{Key: "name", Value: "clip-0001"}},
		BodySize: int64(len(body)), Body: body,
	}
}

var discard = slog.New(slog.DiscardHandler)

func openBolt(b *testing.B) queue.Backend {
	q, err := queue.Open(filepath.Join(b.TempDir(), "offload.db"), &queue.Options{Logger: discard})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	return q
}

func openPostgres(b *testing.B, schema string) *postgres.Queue {
	return openAt(b, schema, &postgres.Options{Logger: discard})
}

// runCallers runs fn b.N times from callers goroutines and returns the
// wall time.
func runCallers(b *testing.B, callers int, fn func(i int64) error) time.Duration {
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range callers {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				if err := fn(i); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err := firstErr.Load(); err != nil {
		b.Fatal(*err)
	}
	return elapsed
}

// BenchmarkEnqueue: durable enqueues of a 1 KiB request into a new queue
// from 1 and 64 concurrent callers, PostgreSQL and bbolt.
func BenchmarkEnqueue(b *testing.B) {
	for _, callers := range []int{1, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			b.Run("bbolt", func(b *testing.B) { benchEnqueue(b, openBolt(b), callers, nil) })
			b.Run("postgres", func(b *testing.B) {
				q := openPostgres(b, newSchema(b))
				benchEnqueue(b, q, callers, q)
			})
		})
	}
}

func benchEnqueue(b *testing.B, q queue.Backend, callers int, pg *postgres.Queue) {
	job := &queue.Job{Target: "bench", Request: benchRequest()}
	ctx := context.Background()
	var commits int64
	if pg != nil {
		commits = pg.Commits()
	}
	b.ReportAllocs()
	elapsed := runCallers(b, callers, func(int64) error {
		_, err := q.Enqueue(ctx, job)
		return err
	})
	perSec := float64(b.N) / elapsed.Seconds()
	b.ReportMetric(perSec, "enqueues/s")
	b.ReportMetric(float64(callers)*elapsed.Seconds()/float64(b.N)*1e6, "us-latency")
	if pg != nil {
		b.ReportMetric(float64(b.N)/float64(max(pg.Commits()-commits, 1)), "ops/commit")
	}
	keep(b, perSec)
}

// BenchmarkEndToEnd: b.N no-op tasks, enqueued by 64 concurrent producers
// spread over the replicas, leased, replayed into the handler and
// finished, with each replica's scheduler running Concurrency 64. The
// clock stops when every scheduler's Run has returned, so every finish is
// durable. bbolt has one replica (one process per file).
func BenchmarkEndToEnd(b *testing.B) {
	b.Run("bbolt", func(b *testing.B) { benchEndToEnd(b, []queue.Backend{openBolt(b)}) })
	for _, replicas := range []int{1, 3} {
		b.Run(fmt.Sprintf("postgres-replicas=%d", replicas), func(b *testing.B) {
			schema := newSchema(b)
			var qs []queue.Backend
			for range replicas {
				qs = append(qs, openPostgres(b, schema))
			}
			benchEndToEnd(b, qs)
		})
	}
}

func benchEndToEnd(b *testing.B, qs []queue.Backend) {
	n := int64(b.N)
	var ran atomic.Int64
	all := make(chan struct{})
	handler := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		if ran.Add(1) == n {
			close(all)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var scheds []*invoke.Scheduler
	var running sync.WaitGroup
	for _, q := range qs {
		s, err := invoke.New(q, &invoke.Options{Logger: discard})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Register("noop", handler, &invoke.Policy{Concurrency: benchConcurrency}); err != nil {
			b.Fatal(err)
		}
		scheds = append(scheds, s)
		running.Go(func() {
			if err := s.Run(ctx); err != nil {
				b.Error(err)
			}
		})
	}
	job := &queue.Job{Target: "noop", Request: benchRequest()}
	var next atomic.Int64
	var failed atomic.Bool
	var producers sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range 64 {
		producers.Go(func() {
			for i := next.Add(1); i <= n && !failed.Load(); i = next.Add(1) {
				if _, err := scheds[i%int64(len(scheds))].Enqueue(ctx, job); err != nil {
					b.Error(err)
					failed.Store(true)
				}
			}
		})
	}
	producers.Wait()
	if !failed.Load() {
		select {
		case <-all:
		case <-time.After(5 * time.Minute):
			b.Errorf("%d of %d tasks ran", ran.Load(), n)
		}
	}
	cancel()
	running.Wait()
	total := time.Since(start)
	b.StopTimer()
	perSec := float64(n) / total.Seconds()
	b.ReportMetric(perSec, "tasks/s")
	keep(b, perSec)
}

// benchConcurrency is each replica's Policy.Concurrency in
// BenchmarkEndToEnd.
const benchConcurrency = 64
