package queue_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/internal/groupcommit"
	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// The benchmarks of issue 2. Run them with
//
//	go test -run '^$' -bench . -benchtime 2s ./queue/
//
// The backlog benchmarks build a database of backlogSize queued tasks once
// per test binary run, in a directory under os.TempDir() that is removed
// when the run ends (afterTests). Plain `go test` runs no benchmark, so it
// never builds it.

const (
	benchTarget  = "bench"
	backlogSize  = 1_000_000
	queryTasks   = 1_000  // tasks in the small database that BenchmarkQuery reads
	fillPerTx    = 50_000 // tasks per transaction when filling directly
	keysPerMilli = 100    // generated keys per millisecond of ULID time
)

func init() { afterTests = append(afterTests, backlog.remove) }

// benchRequest is a 1 KiB POST with the headers a curl client sends.
func benchRequest() *reqcodec.Request {
	body := make([]byte, 1<<10)
	for i := range body {
		body[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[i%36]
	}
	return &reqcodec.Request{
		Method:     http.MethodPost,
		RequestURI: "/videos/clip-0001/transcode?preset=720p",
		Proto:      "HTTP/1.1",
		Host:       "api.example.com",
		RemoteAddr: "203.0.113.7:52114",
		Header: http.Header{
			"Accept":               {"*/*"},
			"Content-Length":       {"1024"},
			"Content-Type":         {"application/json"},
			"User-Agent":           {"curl/8.5.0"},
			"X-Fc-Invocation-Type": {"Async"},
		},
		Pattern:    "POST /videos/{name}/transcode",
		PathValues: []reqcodec.KV{{Key: "name", Value: "clip-0001"}},
		BodySize:   int64(len(body)),
		Body:       body,
	}
}

func benchJob() *queue.Job { return &queue.Job{Target: benchTarget, Request: benchRequest()} }

// benchEpoch is the creation time of the first filled task: far enough back
// that every filled task is ready and older than anything Enqueue adds.
var benchEpoch = time.Now().Add(-time.Duration(backlogSize/keysPerMilli)*time.Millisecond - time.Hour)

// benchKey is the key of the i-th filled task, so that a benchmark can name
// a random existing task without keeping a million IDs in memory.
func benchKey(i int) ulid.ULID {
	var id ulid.ULID
	_ = id.SetTime(ulid.Timestamp(benchEpoch) + uint64(i/keysPerMilli))
	z := uint64(i) + 0x9e3779b97f4a7c15 // splitmix64: distinct random-looking bits per i
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	binary.BigEndian.PutUint64(id[6:14], z^z>>31)
	binary.BigEndian.PutUint16(id[14:], uint16(i))
	return id
}

func openBenchQueue(b *testing.B) *queue.Queue {
	b.Helper()
	q, err := queue.Open(filepath.Join(b.TempDir(), "offload.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := q.Close(); err != nil {
			b.Error(err)
		}
	})
	return q
}

// callN runs fn n times in total from callers goroutines and returns the
// wall time taken, or the first error.
func callN(callers, n int, fn func() error) (time.Duration, error) {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		firstErr atomic.Pointer[error]
	)
	start := time.Now()
	for range callers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := fn(); err != nil {
					firstErr.CompareAndSwap(nil, errPtr(err))
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := firstErr.Load(); err != nil {
		return elapsed, *err
	}
	return elapsed, nil
}

// runCallers is callN for b.N calls, timed as the benchmark.
func runCallers(b *testing.B, callers int, fn func() error) time.Duration {
	b.ResetTimer()
	elapsed, err := callN(callers, b.N, fn)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	return elapsed
}

// errPtr boxes err for an atomic.Pointer, away from the hot loop.
func errPtr(err error) *error { return &err }

func enqueueFunc(q *queue.Queue) func() error {
	job, ctx := benchJob(), context.Background()
	return func() error {
		_, err := q.Enqueue(ctx, job)
		return err
	}
}

// commitStats reports how many ops shared a commit, and the pages a commit
// wrote, over the ops done since the call that returned done.
func commitStats(q *queue.Queue) (done func(b *testing.B, ops int)) {
	commits, pages := queue.CommitsForBench(q), queue.PagesWrittenForBench(q)
	return func(b *testing.B, ops int) {
		commits, pages := max(queue.CommitsForBench(q)-commits, 1), queue.PagesWrittenForBench(q)-pages
		b.ReportMetric(float64(ops)/float64(commits), "ops/commit")
		b.ReportMetric(float64(pages)/float64(commits), "pages/commit")
	}
}

// reportEnqueue reports the throughput of b.N enqueues from callers
// goroutines that took elapsed, and their mean latency (Little's law).
func reportEnqueue(b *testing.B, callers int, elapsed time.Duration) {
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "enqueues/s")
	b.ReportMetric(float64(callers)*elapsed.Seconds()/float64(b.N)*1e6, "us-latency")
}

// BenchmarkEnqueue: durable enqueues of 1 KiB requests (record and every
// index) into a new database, from 1, 16 and 64 concurrent callers.
func BenchmarkEnqueue(b *testing.B) {
	for _, callers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			q := openBenchQueue(b)
			stats := commitStats(q)
			b.ReportAllocs()
			reportEnqueue(b, callers, runCallers(b, callers, enqueueFunc(q)))
			stats(b, b.N)
		})
	}
}

// BenchmarkBareBolt is the yardstick for BenchmarkEnqueue: bbolt alone, one
// Put per call of the same encoded 1 KiB request under a ULID key into one
// bucket, through a single committer like the queue's (everything queued
// since the last commit, gathered the same way), with the queue's bbolt
// options. The gap to BenchmarkEnqueue is what the queue's indexes, checks
// and bookkeeping cost; the rest is the disk.
func BenchmarkBareBolt(b *testing.B) {
	for _, callers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			db, err := bolt.Open(filepath.Join(b.TempDir(), "bare.db"), 0o600, &bolt.Options{
				NoFreelistSync: true, FreelistType: bolt.FreelistMapType, InitialMmapSize: 1 << 30,
			})
			if err != nil {
				b.Fatal(err)
			}
			c := newBareCommitter(db)
			defer func() {
				c.close()
				if err := db.Close(); err != nil {
					b.Error(err)
				}
			}()
			val := reqcodec.Append(nil, benchRequest())
			b.ReportAllocs()
			elapsed := runCallers(b, callers, func() error {
				k := task.NewULID(time.Now())
				return c.put(k[:], val)
			})
			commits := max(c.commits.Load(), 1)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "puts/s")
			b.ReportMetric(float64(b.N)/float64(commits), "ops/commit")
			st := db.Stats()
			b.ReportMetric(float64(st.TxStats.GetWrite())/float64(commits), "pages/commit")
		})
	}
}

// bareCommitter puts key-value pairs through the queue's own group
// committer, one bbolt transaction a batch.
type bareCommitter struct {
	db      *bolt.DB
	writes  *groupcommit.Committer[[2][]byte]
	commits atomic.Int64
}

func newBareCommitter(db *bolt.DB) *bareCommitter {
	c := &bareCommitter{db: db}
	c.writes = groupcommit.Start(c.commit)
	return c
}

func (c *bareCommitter) close() { c.writes.Close() }

func (c *bareCommitter) put(key, val []byte) error {
	return c.writes.Submit(context.Background(), [2][]byte{key, val})
}

func (c *bareCommitter) commit(kvs [][2][]byte) (func(), error) {
	defer c.commits.Add(1)
	return nil, c.db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists([]byte("tasks"))
		if err != nil {
			return err
		}
		bk.FillPercent = 1.0
		for _, kv := range kvs {
			if err := bk.Put(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	})
}

// BenchmarkLeaseFinish: one leaser claims batches of 64 ready tasks and
// hands them to 16 finishers, each finishing its tasks Succeeded with a
// small response, so that finishes share commits as they do under the
// scheduler. One op is one task leased and finished.
func BenchmarkLeaseFinish(b *testing.B) {
	const batch, finishers = 64, 16
	q := openBenchQueue(b)
	if err := queue.FillForBench(q, b.N, fillPerTx, benchTarget, benchRequest(), benchKey); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	out := queue.Outcome{Status: task.Succeeded, Response: &task.Response{
		StatusCode: http.StatusOK,
		Header:     http.Header{"Content-Type": {"application/json"}},
		Body:       []byte(`{"ok":true}`),
		BodySize:   11,
	}}
	leases := make(chan *queue.Lease, 2*batch)
	var (
		wg       sync.WaitGroup
		firstErr atomic.Pointer[error]
	)
	b.ReportAllocs()
	commits := queue.CommitsForBench(q)
	b.ResetTimer()
	start := time.Now()
	for range finishers {
		wg.Go(func() {
			for l := range leases {
				if st, err := q.Finish(ctx, l, out); err != nil || st != task.Succeeded {
					firstErr.CompareAndSwap(nil, errPtr(fmt.Errorf("finish %s: %s, %v", l.ID, st, err)))
				}
			}
		})
	}
	leased := 0
	for leased < b.N && firstErr.Load() == nil {
		res, err := q.Lease(ctx, time.Now(), []queue.LeaseRequest{{Target: benchTarget, Max: min(batch, b.N-leased)}})
		if err != nil || len(res.Leases) == 0 {
			err = fmt.Errorf("lease after %d of %d: %d leases, %v", leased, b.N, len(res.Leases), err)
			firstErr.CompareAndSwap(nil, &err)
			break
		}
		for _, l := range res.Leases {
			leases <- l
		}
		leased += len(res.Leases)
	}
	close(leases)
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err := firstErr.Load(); err != nil {
		b.Fatal(*err)
	}
	commits = queue.CommitsForBench(q) - commits
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "tasks/s")
	// Commits of leases and of finishes alike.
	b.ReportMetric(float64(b.N)/float64(max(commits, 1)), "tasks/commit")
}

// queryFunc returns a func that runs task.Query on n random ones of the
// first tasks filled tasks of q, checks them, and returns the time taken.
func queryFunc(q *queue.Queue, tasks int) func(n int) (time.Duration, error) {
	ctx, rng := context.Background(), rand.New(rand.NewPCG(1, 2))
	return func(n int) (time.Duration, error) {
		start := time.Now()
		for range n {
			id := benchKey(rng.IntN(tasks)).String()
			t, err := task.Query(ctx, q, id)
			if err != nil {
				return 0, err
			}
			if t.ID != id || len(t.Request.Body) != 1<<10 {
				return 0, fmt.Errorf("query %s: got %s with %d body bytes", id, t.ID, len(t.Request.Body))
			}
		}
		return time.Since(start), nil
	}
}

// getFunc is queryFunc for the bare bbolt part of a lookup: a read
// transaction and one Get of the record. It is the yardstick for the
// query: what it grows by with the backlog is the memory latency of a
// B+tree over a larger file, not the queue's doing.
func getFunc(q *queue.Queue, tasks int) func(n int) (time.Duration, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	return func(n int) (time.Duration, error) {
		start := time.Now()
		for range n {
			k := benchKey(rng.IntN(tasks))
			if queue.GetForBench(q, k[:]) == 0 {
				return 0, fmt.Errorf("task %s missing", k)
			}
		}
		return time.Since(start), nil
	}
}

// BenchmarkQuery: task.Query by ID of a random task among queryTasks.
func BenchmarkQuery(b *testing.B) {
	q := openBenchQueue(b)
	if err := queue.FillForBench(q, queryTasks, fillPerTx, benchTarget, benchRequest(), benchKey); err != nil {
		b.Fatal(err)
	}
	if err := q.Check(); err != nil { // the direct fill keeps every index in step
		b.Fatal(err)
	}
	query := queryFunc(q, queryTasks)
	b.ReportAllocs()
	b.ResetTimer()
	if _, err := query(b.N); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkBacklog runs the enqueue and query benchmarks (and, as a
// yardstick for the query, the bare bbolt lookup under it) on a database
// holding backlogSize queued tasks of the same target. Each one runs its
// b.N operations in chunks that alternate with as many on a new database
// (for the query, one of queryTasks tasks), and reports the ratio of the
// two times per operation as x-vs-empty (the bar: at most about 1.2) and
// the empty database's time as empty-ns/op, so that the drift of a shared
// machine falls on both alike. ns/op, allocs and the other metrics are the
// backlog's. It also reports the process RSS with the backlog open.
func BenchmarkBacklog(b *testing.B) {
	// The big queue is opened once per run of this benchmark (-count) and
	// closed when it ends, before the leak check.
	var big *queue.Queue
	open := func(sub *testing.B) *queue.Queue {
		if big == nil {
			big = backlog.open(sub)
			b.Cleanup(func() {
				if err := big.Close(); err != nil {
					b.Error(err)
				}
			})
		}
		return big
	}
	for _, callers := range []int{1, 64} {
		b.Run(fmt.Sprintf("Enqueue/callers=%d/backlog=1M", callers), func(b *testing.B) {
			q, empty := open(b), openBenchQueue(b)
			run := func(q *queue.Queue) func(n int) (time.Duration, error) {
				fn := enqueueFunc(q)
				return func(n int) (time.Duration, error) { return callN(callers, n, fn) }
			}
			stats := commitStats(q)
			per := interleave(b, run(q), run(empty))
			reportEnqueue(b, callers, per*time.Duration(b.N))
			stats(b, b.N)
			reportRSS(b)
		})
	}
	for _, kind := range []struct {
		name string
		run  func(q *queue.Queue, tasks int) func(n int) (time.Duration, error)
	}{{"Query", queryFunc}, {"Get", getFunc}} {
		b.Run(kind.name+"/backlog=1M", func(b *testing.B) {
			q, small := open(b), openBenchQueue(b)
			if err := queue.FillForBench(small, queryTasks, fillPerTx, benchTarget, benchRequest(), benchKey); err != nil {
				b.Fatal(err)
			}
			interleave(b, kind.run(q, backlogSize), kind.run(small, queryTasks))
			reportRSS(b)
		})
	}
}

// interleave runs b.N operations with big, timed, in chunks that
// alternate (in alternating order) with as many untimed ones with empty,
// reports the ratio and empty's time per operation, and returns big's.
func interleave(b *testing.B, big, empty func(n int) (time.Duration, error)) time.Duration {
	const chunks = 32
	b.ReportAllocs()
	b.ResetTimer()
	b.StopTimer()
	var tBig, tEmpty time.Duration
	per := max(b.N/chunks, 1)
	for i, done := 0, 0; done < b.N; i++ {
		n := min(per, b.N-done)
		runEmpty := func() {
			d, err := empty(n)
			if err != nil {
				b.Fatal("empty database:", err)
			}
			tEmpty += d
		}
		if i%2 == 0 {
			runEmpty()
		}
		b.StartTimer()
		d, err := big(n)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		tBig += d
		if i%2 == 1 {
			runEmpty()
		}
		done += n
	}
	b.ReportMetric(float64(tBig)/float64(tEmpty), "x-vs-empty")
	b.ReportMetric(float64(tEmpty.Nanoseconds())/float64(b.N), "empty-ns/op")
	return tBig / time.Duration(b.N)
}

// reportRSS reports the process's resident memory.
func reportRSS(b *testing.B) {
	rss, anon := procRSS(b)
	b.ReportMetric(float64(rss)/(1<<20), "rss-MB")
	b.ReportMetric(float64(anon)/(1<<20), "rss-anon-MB")
}

// procRSS returns VmRSS and RssAnon from /proc/self/status, in bytes.
// VmRSS includes the pages of the bbolt file mapped and touched so far
// (page cache, reclaimable); RssAnon is the process's own memory.
func procRSS(b *testing.B) (rss, anon int64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Skip("no /proc/self/status:", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			continue
		}
		switch name {
		case "VmRSS":
			rss = kb << 10
		case "RssAnon":
			anon = kb << 10
		}
	}
	return rss, anon
}

// backlog is the file with backlogSize queued tasks, built on first use
// and shared by every benchmark of the run (and every -count).
var backlog backlogDB

type backlogDB struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// open opens the backlog queue, building the file first if this is the
// first use. The caller closes it.
func (d *backlogDB) open(b *testing.B) *queue.Queue {
	b.Helper()
	d.once.Do(func() {
		start := time.Now()
		if d.dir, d.err = os.MkdirTemp("", "offload-bench-backlog-"); d.err != nil {
			return
		}
		d.path = filepath.Join(d.dir, "offload.db")
		q, err := queue.Open(d.path, nil)
		if err != nil {
			d.err = err
			return
		}
		d.err = errors.Join(queue.FillForBench(q, backlogSize, fillPerTx, benchTarget, benchRequest(), benchKey), q.Close())
		var size int64
		if fi, err := os.Stat(d.path); err == nil {
			size = fi.Size()
		}
		b.Logf("built a backlog of %d queued tasks in %s (%d MiB file)", backlogSize, time.Since(start).Round(time.Millisecond), size>>20)
	})
	if d.err != nil {
		b.Fatal("build backlog:", d.err)
	}
	start := time.Now()
	q, err := queue.Open(d.path, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("opened the backlog in %s", time.Since(start).Round(time.Millisecond))
	// Hand back what the fill's large transactions left on the heap, so
	// that the RSS reported is the queue's, not the fill's.
	runtime.GC()
	debug.FreeOSMemory()
	return q
}

func (d *backlogDB) remove() {
	if d.dir != "" {
		os.RemoveAll(d.dir)
	}
}
