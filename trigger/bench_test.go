package trigger_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

// BenchmarkAsyncVsSync measures, in one run and on one server, async
// accepts against sync calls of the same no-op handler: POSTs of a 1 KiB
// body from 64 concurrent keep-alive clients, b.N in each round:
//
//  1. async, before the scheduler runs: the accept path alone
//     (async-idle-*);
//  2. the scheduler starts and runs every task accepted so far;
//  3. sync, the baseline (sync-*);
//  4. async while the scheduler runs the round's tasks as they come, which
//     is what a service sees (async-*);
//  5. the scheduler runs the rest.
//
// Every 202 is checked durable by its task being run. The rounds report
// throughput, the p50/p99 latency, the ratios to the sync baseline, and
// (on Unix) the process's CPU time per request.
//
//	go test -run '^$' -bench AsyncVsSync -benchtime 3s -count 3 ./trigger/
func BenchmarkAsyncVsSync(b *testing.B) {
	const clients = 64
	body := bytes.Repeat([]byte("x"), 1<<10)

	q := testutil.OpenQueue(b, &queue.Options{Logger: discard})
	sched, err := invoke.New(q, &invoke.Options{Logger: discard})
	if err != nil {
		b.Fatal(err)
	}
	var replayed atomic.Int64
	progress := make(chan struct{}, 1)
	noop := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if _, ok := task.FromContext(r.Context()); ok {
			replayed.Add(1)
			select {
			case progress <- struct{}{}:
			default:
			}
		}
	})
	tr := trigger.New(sched, &trigger.Options{TaskPath: taskPath})
	mux := http.NewServeMux()
	mux.Handle("POST /noop", tr.Async("noop", noop, &invoke.Policy{Concurrency: clients}))
	mux.Handle(taskPath, http.StripPrefix("/tasks", trigger.TaskAPI(q, nil)))

	ran := make(chan error, 1)
	started := false
	defer func() {
		if err := sched.Stop(context.Background()); err != nil {
			b.Error(err)
		}
		if started {
			<-ran
		}
	}()
	srv := httptest.NewServer(mux)
	defer srv.Close()
	transport := &http.Transport{MaxIdleConnsPerHost: clients, MaxIdleConns: clients}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	url := srv.URL + "/noop"

	// round sends n requests from the clients and returns the elapsed
	// time, every request's latency, and the process's CPU time.
	round := func(n int, async bool) (time.Duration, []time.Duration, time.Duration) {
		var next atomic.Int64
		lat := make([][]time.Duration, clients)
		var wg sync.WaitGroup
		cpu0, start := processCPU(), time.Now()
		for c := range clients {
			wg.Go(func() {
				mine := make([]time.Duration, 0, n/clients+1)
				for next.Add(1) <= int64(n) {
					req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
					if async {
						req.Header.Set(trigger.HeaderInvocationType, "Async")
					}
					t0 := time.Now()
					res, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
					mine = append(mine, time.Since(t0))
					if want := map[bool]int{true: http.StatusAccepted, false: http.StatusOK}[async]; res.StatusCode != want {
						b.Errorf("status %d, want %d", res.StatusCode, want)
						return
					}
				}
				lat[c] = mine
			})
		}
		wg.Wait()
		return time.Since(start), slices.Concat(lat...), processCPU() - cpu0
	}

	// A warm-up of both kinds, so that connections exist.
	round(clients, true)
	round(clients, false)
	accepted := int64(clients)
	drain := func() {
		deadline := time.NewTimer(time.Minute)
		defer deadline.Stop()
		for replayed.Load() < accepted {
			select {
			case <-progress:
			case <-deadline.C:
				b.Fatalf("%d of %d accepted tasks run after a minute", replayed.Load(), accepted)
			}
		}
	}

	b.ResetTimer()
	idleTime, idleLat, idleCPU := round(b.N, true)
	accepted += int64(b.N)
	b.StopTimer()
	go func() { ran <- sched.Run(context.Background()) }()
	started = true
	drain() // every 202 was stored: its task runs
	b.StartTimer()
	syncTime, syncLat, syncCPU := round(b.N, false)
	asyncTime, asyncLat, asyncCPU := round(b.N, true)
	accepted += int64(b.N)
	b.StopTimer()
	drain()

	rate := func(d time.Duration) float64 { return float64(b.N) / d.Seconds() }
	ip50, ip99 := percentiles(idleLat)
	ap50, ap99 := percentiles(asyncLat)
	sp50, sp99 := percentiles(syncLat)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(rate(asyncTime), "async-accepts/s")
	b.ReportMetric(rate(syncTime), "sync-calls/s")
	b.ReportMetric(rate(idleTime), "async-idle-accepts/s")
	b.ReportMetric(rate(asyncTime)/rate(syncTime), "async/sync")
	b.ReportMetric(rate(idleTime)/rate(syncTime), "async-idle/sync")
	b.ReportMetric(ap50, "async-p50-us")
	b.ReportMetric(ap99, "async-p99-us")
	b.ReportMetric(ip50, "async-idle-p50-us")
	b.ReportMetric(ip99, "async-idle-p99-us")
	b.ReportMetric(sp50, "sync-p50-us")
	b.ReportMetric(sp99, "sync-p99-us")
	b.ReportMetric(ap99/sp99, "p99-async/sync")
	b.ReportMetric(ip99/sp99, "p99-async-idle/sync")
	// CPU per request, the whole process's (clients included): steadier
	// than throughput on a shared machine, and what bounds it once the
	// cores are busy.
	if syncCPU > 0 {
		perReq := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
		b.ReportMetric(perReq(syncCPU), "sync-cpu-us/req")
		b.ReportMetric(perReq(idleCPU), "async-idle-cpu-us/req")
		b.ReportMetric(perReq(asyncCPU), "async-cpu-us/req")
		b.ReportMetric(perReq(idleCPU)/perReq(syncCPU), "cpu-async-idle/sync")
	}
}

// percentiles returns the p50 and p99 of d in microseconds.
func percentiles(d []time.Duration) (p50, p99 float64) {
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	at := func(p float64) float64 {
		return float64(d[min(len(d)-1, int(p*float64(len(d))))].Nanoseconds()) / 1e3
	}
	return at(0.50), at(0.99)
}

// BenchmarkAccept measures the middleware's accept path alone (no
// network): what one async request costs in CPU and allocations, the
// queue's group commit included.
//
//	go test -run '^$' -bench Accept -benchmem ./trigger/
func BenchmarkAccept(b *testing.B) {
	q := testutil.OpenQueue(b, &queue.Options{Logger: discard})
	sched, err := invoke.New(q, &invoke.Options{Logger: discard})
	if err != nil {
		b.Fatal(err)
	}
	defer sched.Stop(context.Background())
	h := trigger.New(sched, &trigger.Options{TaskPath: taskPath}).Async("noop", http.NotFoundHandler(), nil)
	body := bytes.Repeat([]byte("x"), 1<<10)
	b.ReportAllocs()
	b.SetParallelism(32) // many requests in flight share each commit, as on a server
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest(http.MethodPost, "/noop", bytes.NewReader(body))
			req.Header.Set(trigger.HeaderInvocationType, "Async")
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != http.StatusAccepted {
				b.Errorf("status %d %s", w.Code, w.Body)
				return
			}
		}
	})
}
