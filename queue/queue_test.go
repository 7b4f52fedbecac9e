package queue_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"go.uber.org/goleak"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/queue/queuetest"
	"github.com/offload-go/offload/task"
)

// afterTests run once every test and benchmark of the binary is done,
// after the leak check; other files of the package register their cleanups
// here (in an init), since a package has only one TestMain.
var afterTests []func()

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		for _, f := range afterTests {
			f()
		}
		os.Exit(code)
	}))
}

func TestConformance(t *testing.T) {
	t.Parallel()
	queuetest.Run(t, func(t *testing.T) queue.Backend {
		return testutil.OpenQueue(t, &queue.Options{Logger: discard})
	})
}

var (
	ctx     = context.Background()
	discard = slog.New(slog.DiscardHandler)
)

// openAt opens the queue at path; on cleanup it checks the indexes and
// closes it (Close is idempotent, so a test may close it earlier).
func openAt(t *testing.T, path string, opts *queue.Options) *queue.Queue {
	t.Helper()
	if opts == nil {
		opts = &queue.Options{}
	}
	if opts.Logger == nil {
		opts.Logger = discard
	}
	q, err := queue.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := q.Check(); err != nil && !errors.Is(err, berrors.ErrDatabaseNotOpen) {
			t.Error(err)
		}
		if err := q.Close(); err != nil {
			t.Error(err)
		}
	})
	return q
}

// reopen closes q, checking it first, and opens its file again.
func reopen(t *testing.T, q *queue.Queue, opts *queue.Options) *queue.Queue {
	t.Helper()
	if err := q.Check(); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	return openAt(t, q.Path(), opts)
}

func request(body []byte) *reqcodec.Request {
	return &reqcodec.Request{
		Method: http.MethodPost, RequestURI: "/work", Host: "example.com",
		Header: http.Header{"Content-Type": {"text/plain"}}, BodySize: int64(len(body)), Body: body,
	}
}

func enqueue(t *testing.T, q *queue.Queue, job *queue.Job) string {
	t.Helper()
	if job.Request == nil {
		job.Request = request([]byte("hello"))
	}
	r, err := q.Enqueue(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	return r.ID
}

func leaseAll(t *testing.T, q *queue.Queue, at time.Time, target string) []*queue.Lease {
	t.Helper()
	res, err := q.Lease(ctx, at, []queue.LeaseRequest{{Target: target, Max: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	return res.Leases
}

func status(t *testing.T, q *queue.Queue, id string) *task.Task {
	t.Helper()
	tk, err := task.Query(ctx, q, id)
	if err != nil {
		t.Fatalf("Query(%s): %v", id, err)
	}
	return tk
}

// clock is an injected Options.Now.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func TestOpenCreatesPrivateFiles(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "new.db")
	openAt(t, path, nil)
	for _, c := range []struct {
		path string
		mode os.FileMode
	}{{path, 0o600}, {path + ".blobs", 0o700 | os.ModeDir}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != c.mode {
			t.Errorf("%s: mode %v, want %v", c.path, fi.Mode(), c.mode)
		}
	}
}

func TestOpenOptions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, o := range []queue.Options{{LockTimeout: -1}, {Retention: -1}, {PurgeInterval: -1}} {
		if q, err := queue.Open(filepath.Join(dir, "neg.db"), &o); err == nil {
			q.Close()
			t.Errorf("Open(%+v) succeeded", o)
		}
	}
	if _, err := queue.Open(filepath.Join(dir, "missing", "dir", "x.db"), nil); err == nil {
		t.Error("Open in a missing directory succeeded")
	}
}

// offloadDB makes a real queue database with some tasks, closed.
func offloadDB(t *testing.T, path string, tasks int) {
	t.Helper()
	q := openAt(t, path, nil)
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < tasks; i += 16 {
				job := &queue.Job{Target: "t", Request: request(bytes.Repeat([]byte{byte(i)}, 700))}
				if _, err := q.Enqueue(ctx, job); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenForeignFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	real := filepath.Join(dir, "real.db")
	offloadDB(t, real, 800)
	full, err := os.ReadFile(real)
	if err != nil {
		t.Fatal(err)
	}
	// bbolt grows its file ahead of use: cut what the pages in use need.
	db, err := bolt.Open(real, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var used int
	_ = db.View(func(tx *bolt.Tx) error { used = int(tx.Size()); return nil })
	db.Close()
	if used > len(full) || used < 64<<10 {
		t.Fatalf("%d of the file's %d bytes in use", used, len(full))
	}
	random := make([]byte, 64<<10)
	_, _ = rand.Read(random)

	write := func(b []byte) func(string) error {
		return func(path string) error { return os.WriteFile(path, b, 0o600) }
	}
	boltWith := func(fn func(tx *bolt.Tx) error) func(string) error {
		return func(path string) error {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				return err
			}
			if err := db.Update(fn); err != nil {
				db.Close()
				return err
			}
			return db.Close()
		}
	}
	for _, c := range []struct {
		name string
		make func(path string) error
	}{
		{"random bytes", write(random)},
		{"text", write([]byte("hello, I am not a database\n"))},
		{"ten bytes", write(full[:10])},
		{"truncated to one page", write(full[:4096])},
		{"truncated to the meta pages", write(full[:8192])},
		{"truncated within a page", write(full[:8192+100])},
		{"truncated to half", write(full[:used/2])},
		{"truncated by a page", write(full[:used-4096])},
		{"truncated by a byte", write(full[:used-1])},
		{"bbolt with other buckets", boltWith(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucket([]byte("users"))
			return err
		})},
		{"bbolt with a foreign meta bucket", boltWith(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucket([]byte("meta"))
			if err != nil {
				return err
			}
			return b.Put([]byte("magic"), []byte("someone-else/3"))
		})},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "foreign.db")
			if err := c.make(path); err != nil {
				t.Fatal(err)
			}
			for range 2 { // a failed Open leaves nothing locked behind
				q, err := queue.Open(path, &queue.Options{LockTimeout: 100 * time.Millisecond, Logger: discard})
				if err == nil {
					q.Close()
					t.Fatal("Open succeeded")
				}
				if !errors.Is(err, queue.ErrNotOffload) {
					t.Fatalf("err = %v, want ErrNotOffload", err)
				}
				if !strings.Contains(err.Error(), path) {
					t.Errorf("err = %v, does not name %s", err, path)
				}
			}
		})
	}

	// An empty bbolt database, and an empty file, become queues.
	t.Run("empty bbolt", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "empty.db")
		if err := boltWith(func(*bolt.Tx) error { return nil })(path); err != nil {
			t.Fatal(err)
		}
		enqueue(t, openAt(t, path, nil), &queue.Job{Target: "t"})
	})
	t.Run("empty file", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "empty.db")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		enqueue(t, openAt(t, path, nil), &queue.Job{Target: "t"})
	})
	// The untouched original still opens, with its tasks.
	t.Run("original", func(t *testing.T) {
		q := openAt(t, real, nil)
		page, err := task.List(ctx, q, task.Filter{Limit: 100})
		if err != nil || len(page.Tasks) != 100 || page.Next == "" {
			t.Fatalf("List = %d tasks, next %q, %v", len(page.Tasks), page.Next, err)
		}
	})
}

// Environment of the child processes that the tests start from their own
// binary.
const (
	envLockChild  = "OFFLOAD_TEST_LOCK_CHILD"
	envCrashChild = "OFFLOAD_TEST_CRASH_CHILD"
	envCrashDB    = "OFFLOAD_TEST_CRASH_DB"
	envCrashRound = "OFFLOAD_TEST_CRASH_ROUND"
)

// TestLockChild is the child of TestOpenLocked: it holds the queue open
// until its stdin closes. Run normally, it does nothing.
func TestLockChild(t *testing.T) {
	path := os.Getenv(envLockChild)
	if path == "" {
		return
	}
	q, err := queue.Open(path, &queue.Options{Logger: discard})
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	defer q.Close()
	fmt.Println("locked")
	_, _ = io.Copy(io.Discard, os.Stdin)
}

func TestOpenLocked(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "locked.db")
	offloadDB(t, path, 1)

	cmd := exec.Command(os.Args[0], "-test.run=^TestLockChild$")
	cmd.Env = append(os.Environ(), envLockChild+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := false
	t.Cleanup(func() {
		if !done {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if line != "locked\n" {
		t.Fatalf("child said %q (%v); stderr: %s", line, err, stderr.String())
	}

	const timeout = 200 * time.Millisecond
	start := time.Now()
	q, err := queue.Open(path, &queue.Options{LockTimeout: timeout, Logger: discard})
	if err == nil {
		q.Close()
		t.Fatal("Open of a locked database succeeded")
	}
	if !errors.Is(err, queue.ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Errorf("err = %v, want ErrLocked naming %s", err, path)
	}
	// bbolt retries the lock every 50ms and gives up in the last period.
	if waited := time.Since(start); waited < timeout/2 {
		t.Errorf("gave up after %v, long before the %v timeout", waited, timeout)
	}

	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v; stderr: %s", err, stderr.String())
	}
	done = true
	openAt(t, path, nil) // free again
}

func TestRecovery(t *testing.T) {
	t.Parallel()
	q := openAt(t, filepath.Join(t.TempDir(), "recover.db"), nil)
	far := time.Now().Add(time.Hour)
	running := enqueue(t, q, &queue.Job{Target: "r"})
	stopping := enqueue(t, q, &queue.Job{Target: "r"})
	leases := leaseAll(t, q, time.Now(), "r")
	if len(leases) != 2 {
		t.Fatalf("leased %d", len(leases))
	}
	if _, err := task.Stop(ctx, q, stopping); err != nil {
		t.Fatal(err)
	}
	queued := enqueue(t, q, &queue.Job{Target: "r", ReadyAt: far})
	retrying := enqueue(t, q, &queue.Job{Target: "r2"})
	l := leaseAll(t, q, time.Now(), "r2")[0]
	if _, err := q.Finish(ctx, l, queue.Outcome{Status: task.Retrying, ReadyAt: far}); err != nil {
		t.Fatal(err)
	}
	done := enqueue(t, q, &queue.Job{Target: "r2"})
	l = leaseAll(t, q, time.Now(), "r2")[0]
	if _, err := q.Finish(ctx, l, queue.Outcome{Status: task.Succeeded}); err != nil {
		t.Fatal(err)
	}

	// The process "dies": the file keeps the Running and Stopping states
	// exactly as a killed process leaves them (see also TestCrash).
	before := time.Now()
	q = reopen(t, q, nil)

	tk := status(t, q, running)
	if tk.Status != task.Retrying || tk.Attempts != 1 || tk.LastError == "" || tk.ReadyAt.Before(before) {
		t.Errorf("running task after restart: %s attempts %d lastError %q readyAt %v", tk.Status, tk.Attempts, tk.LastError, tk.ReadyAt)
	}
	// A stop in progress ends when a scheduler starts, under the
	// destinations it registers: its onFailure delivery is owed.
	if tk := status(t, q, stopping); tk.Status != task.Stopping {
		t.Errorf("stopping task after restart, before a scheduler starts: %s", tk.Status)
	}
	q.SetDestinations("r", false, true)
	if _, err := q.Invalidate(ctx, []string{"r", "r2"}); err != nil {
		t.Fatal(err)
	}
	tk = status(t, q, stopping)
	if tk.Status != task.Stopped || tk.Attempts != 1 || tk.FinishedAt.IsZero() || tk.LastError == "" {
		t.Errorf("stopping task once a scheduler starts: %s attempts %d lastError %q", tk.Status, tk.Attempts, tk.LastError)
	}
	if len(tk.Deliveries) != 1 || tk.Deliveries[0].Destination != task.OnFailure || tk.Deliveries[0].Status != task.DeliveryPending {
		t.Errorf("stopping task once a scheduler starts: deliveries %+v; want one pending onFailure", tk.Deliveries)
	}
	if ds, _, err := q.PendingDeliveries(ctx, time.Now().Add(time.Minute), 10, func(string) bool { return false }); err != nil || len(ds) != 1 || ds[0].TaskID != stopping {
		t.Errorf("outbox after the stop ended: %+v, %v; want the stopped task's delivery", ds, err)
	}
	if tk := status(t, q, queued); tk.Status != task.Enqueued || !tk.ReadyAt.Equal(far) {
		t.Errorf("queued task after restart: %s readyAt %v", tk.Status, tk.ReadyAt)
	}
	if tk := status(t, q, retrying); tk.Status != task.Retrying || !tk.ReadyAt.Equal(far) || tk.Attempts != 1 {
		t.Errorf("retrying task after restart: %s readyAt %v attempts %d", tk.Status, tk.ReadyAt, tk.Attempts)
	}
	if tk := status(t, q, done); tk.Status != task.Succeeded {
		t.Errorf("finished task after restart: %s", tk.Status)
	}
	// The lost attempt counted: the next one is the second.
	leases = leaseAll(t, q, time.Now(), "r")
	if len(leases) != 1 || leases[0].ID != running || leases[0].Attempt != 2 {
		t.Fatalf("lease after restart: %+v", leases)
	}
	// Leases of the dead process are fenced off.
	if _, err := q.Finish(ctx, l, queue.Outcome{Status: task.Failed}); !errors.Is(err, task.ErrLeaseLost) {
		t.Errorf("finish of a finished task's lease: %v", err)
	}
	// A second restart finds nothing more to recover than the new attempt.
	q = reopen(t, q, nil)
	if tk := status(t, q, running); tk.Status != task.Retrying || tk.Attempts != 2 {
		t.Errorf("after a second restart: %s attempts %d", tk.Status, tk.Attempts)
	}
}

func TestClose(t *testing.T) {
	t.Parallel()
	q := openAt(t, filepath.Join(t.TempDir(), "close.db"), nil)
	id := enqueue(t, q, &queue.Job{Target: "c"})
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := q.Enqueue(ctx, &queue.Job{Target: "c", Request: request(nil)}); !errors.Is(err, task.ErrClosed) {
		t.Errorf("Enqueue after Close: %v, want ErrClosed", err)
	}
	if _, err := q.Lease(ctx, time.Now(), []queue.LeaseRequest{{Target: "c", Max: 1}}); !errors.Is(err, task.ErrClosed) {
		t.Errorf("Lease after Close: %v, want ErrClosed", err)
	}
	if _, err := task.Stop(ctx, q, id); !errors.Is(err, task.ErrClosed) {
		t.Errorf("Stop after Close: %v, want ErrClosed", err)
	}
	// Everything acknowledged before Close is on disk.
	q = openAt(t, q.Path(), nil)
	status(t, q, id)
}

// A task its caller named has that ID only: the key it is stored under,
// which a listing's cursor carries, does not find it (as in PostgreSQL).
func TestCallerNamedTaskKeyIsNotAnID(t *testing.T) {
	t.Parallel()
	q := testutil.OpenQueue(t, &queue.Options{Logger: discard})
	for _, id := range []string{"job_1", "job_2"} {
		enqueue(t, q, &queue.Job{ID: id, Target: "c"})
	}
	page, err := task.List(ctx, q, task.Filter{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := queue.ParseCursor(page.Next)
	if err != nil || cur == nil || cur.Kind != queue.CursorKey {
		t.Fatalf("cursor %q: %+v, %v; want a key cursor", page.Next, cur, err)
	}
	key := ulid.ULID(cur.Key).String()
	for _, id := range []string{key, strings.ToLower(key)} {
		if tk, err := task.Query(ctx, q, id); !errors.Is(err, task.ErrNotFound) {
			t.Errorf("Query(%s), the key of %s: %v, %v; want ErrNotFound", id, page.Tasks[0].ID, tk, err)
		}
		if _, err := task.Stop(ctx, q, id); !errors.Is(err, task.ErrNotFound) {
			t.Errorf("Stop(%s), the key of %s: %v; want ErrNotFound", id, page.Tasks[0].ID, err)
		}
	}
}

// TestConcurrentClose closes the queue while writers are busy: each write
// either succeeds, and is then on disk, or fails with ErrClosed.
func TestConcurrentClose(t *testing.T) {
	t.Parallel()
	q := openAt(t, filepath.Join(t.TempDir(), "cclose.db"), nil)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		acked []string
	)
	started := make(chan struct{})
	var once sync.Once
	for range 8 {
		wg.Go(func() {
			for {
				r, err := q.Enqueue(ctx, &queue.Job{Target: "cc", Request: request(nil)})
				if errors.Is(err, task.ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				acked = append(acked, r.ID)
				if len(acked) == 50 {
					once.Do(func() { close(started) })
				}
				mu.Unlock()
			}
		})
	}
	<-started
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	q = openAt(t, q.Path(), nil)
	for _, id := range acked {
		status(t, q, id)
	}
}

func TestRetention(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	clk := newClock(t0)
	opts := &queue.Options{Now: clk.Now, Retention: time.Hour, PurgeInterval: 24 * time.Hour}
	q := testutil.OpenQueue(t, opts)

	// A finished task with a blob body, a caller ID and an idempotency key.
	blob, err := q.CreateBlob()
	if err != nil {
		t.Fatal(err)
	}
	_, _ = blob.Write(bytes.Repeat([]byte("x"), 1000))
	if err := blob.Close(); err != nil {
		t.Fatal(err)
	}
	req := request(nil)
	req.Blob, req.BodySize = blob.Name(), 1000
	blobFile := filepath.Join(q.Path()+".blobs", blob.Name())
	fp := sha256.Sum256([]byte("one"))
	withBlob := enqueue(t, q, &queue.Job{ID: "keep_me_not", Target: "ret", IdempotencyKey: "key-1", Fingerprint: fp, Request: req})

	// One finished task of each terminal status, and one of each live one.
	finished := []string{withBlob}
	for range 4 {
		finished = append(finished, enqueue(t, q, &queue.Job{Target: "ret"}))
	}
	leases := leaseAll(t, q, clk.Now(), "ret")
	if len(leases) != 5 {
		t.Fatalf("leased %d", len(leases))
	}
	for i, st := range []task.Status{task.Succeeded, task.Failed, task.Expired, task.Invalid} {
		if _, err := q.Finish(ctx, leases[i], queue.Outcome{Status: st}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := task.Stop(ctx, q, leases[4].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Finish(ctx, leases[4], queue.Outcome{Status: task.Failed}); err != nil {
		t.Fatal(err)
	}
	live := map[string]task.Status{}
	live[enqueue(t, q, &queue.Job{Target: "live"})] = task.Enqueued
	live[enqueue(t, q, &queue.Job{Target: "live", ReadyAt: t0.Add(1000 * time.Hour)})] = task.Enqueued
	for range 3 {
		enqueue(t, q, &queue.Job{Target: "live2"})
	}
	ls := leaseAll(t, q, clk.Now(), "live2")
	live[ls[0].ID] = task.Running
	if _, err := q.Finish(ctx, ls[1], queue.Outcome{Status: task.Retrying, ReadyAt: t0.Add(1000 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	live[ls[1].ID] = task.Retrying
	if _, err := task.Stop(ctx, q, ls[2].ID); err != nil {
		t.Fatal(err)
	}
	live[ls[2].ID] = task.Stopping

	// Not yet past retention.
	clk.Advance(59 * time.Minute)
	if n, err := q.Purge(ctx); err != nil || n != 0 {
		t.Fatalf("Purge before retention = %d, %v", n, err)
	}
	for _, id := range finished {
		status(t, q, id)
	}
	// Past it: every finished task goes, with its blob; no live one does.
	clk.Advance(2 * time.Minute)
	if n, err := q.Purge(ctx); err != nil || n != len(finished) {
		t.Fatalf("Purge = %d, %v; want %d", n, err, len(finished))
	}
	for _, id := range finished {
		if _, err := task.Query(ctx, q, id); !errors.Is(err, task.ErrNotFound) {
			t.Errorf("purged task %s: %v, want ErrNotFound", id, err)
		}
	}
	if _, err := os.Stat(blobFile); !os.IsNotExist(err) {
		t.Errorf("blob of a purged task: %v", err)
	}
	clk.Advance(10000 * time.Hour)
	if n, err := q.Purge(ctx); err != nil || n != 0 {
		t.Fatalf("Purge of live tasks = %d, %v", n, err)
	}
	for id, st := range live {
		if tk := status(t, q, id); tk.Status != st {
			t.Errorf("live task %s is %s, want %s", id, tk.Status, st)
		}
	}
	page, err := task.List(ctx, q, task.Filter{Limit: 100})
	if err != nil || len(page.Tasks) != len(live) {
		t.Errorf("after purge: %d tasks listed, %v; want %d", len(page.Tasks), err, len(live))
	}
	// The caller ID and the idempotency key are free again.
	r, err := q.Enqueue(ctx, &queue.Job{ID: "keep_me_not", Target: "ret", IdempotencyKey: "key-1",
		Fingerprint: sha256.Sum256([]byte("two")), Request: request(nil)})
	if err != nil || r.Replayed || r.ID != "keep_me_not" {
		t.Errorf("Enqueue of a purged task's ID and key = %+v, %v", r, err)
	}
}

// TestPurgeBatches purges more tasks than one purge transaction takes.
func TestPurgeBatches(t *testing.T) {
	t.Parallel()
	clk := newClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	q := testutil.OpenQueue(t, &queue.Options{Now: clk.Now, Retention: time.Minute, PurgeInterval: 24 * time.Hour})
	const n = 1234
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Go(func() {
			for i := w; i < n; i += 64 {
				if _, err := q.Enqueue(ctx, &queue.Job{Target: "many", Request: request(nil)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	keep := enqueue(t, q, &queue.Job{Target: "other"})
	leases := leaseAll(t, q, clk.Now(), "many")
	if len(leases) != n {
		t.Fatalf("leased %d", len(leases))
	}
	for w := range 64 {
		wg.Go(func() {
			for i := w; i < n; i += 64 {
				if _, err := q.Finish(ctx, leases[i], queue.Outcome{Status: task.Succeeded}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	clk.Advance(time.Hour)
	if got, err := q.Purge(ctx); err != nil || got != n {
		t.Fatalf("Purge = %d, %v; want %d", got, err, n)
	}
	status(t, q, keep)
}

func TestBlobSweep(t *testing.T) {
	t.Parallel()
	q := openAt(t, filepath.Join(t.TempDir(), "blobs.db"), nil)
	blobDir := q.Path() + ".blobs"
	write := func(data string, close bool) queue.Blob {
		b, err := q.CreateBlob()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(b, data); err != nil {
			t.Fatal(err)
		}
		if close {
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
		}
		return b
	}
	kept := write("kept body", true)
	req := request(nil)
	req.Blob, req.BodySize = kept.Name(), 9
	id := enqueue(t, q, &queue.Job{Target: "b", Request: req})
	orphan := write("never enqueued", true)
	unclosed := write("half written", false)
	defer unclosed.Remove()
	for _, b := range []queue.Blob{kept, orphan, unclosed} {
		fi, err := os.Stat(filepath.Join(blobDir, b.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != 0o600 {
			t.Errorf("blob mode %v, want 0600", fi.Mode())
		}
		if strings.ContainsAny(b.Name(), `/\.`) {
			t.Errorf("blob name %q", b.Name())
		}
	}

	q = reopen(t, q, nil)
	for _, b := range []queue.Blob{orphan, unclosed} {
		if _, err := os.Stat(filepath.Join(blobDir, b.Name())); !os.IsNotExist(err) {
			t.Errorf("orphan blob %s survived Open: %v", b.Name(), err)
		}
	}
	l := leaseAll(t, q, time.Now(), "b")[0]
	if l.ID != id {
		t.Fatalf("leased %s", l.ID)
	}
	rc, err := q.OpenBody(l)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, _ := io.ReadAll(rc); string(got) != "kept body" {
		t.Errorf("body after reopen = %q", got)
	}

	// A damaged lease never reaches outside the blob directory.
	bad := *l
	badReq := *l.Request
	badReq.Blob = "../blobs.db"
	bad.Request = &badReq
	if rc, err := q.OpenBody(&bad); err == nil {
		rc.Close()
		t.Error("OpenBody of a bad blob name succeeded")
	}
}

// TestCheckFindsCorruption proves that the index checker can fail: each
// case damages one index of a closed database behind the queue's back.
func TestCheckFindsCorruption(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		damage func(t *testing.T, tx *bolt.Tx, key []byte)
		want   string
	}{
		{"status index entry removed", func(t *testing.T, tx *bolt.Tx, key []byte) {
			ib := tx.Bucket([]byte("index")).Bucket([]byte("chk"))
			c := ib.Cursor()
			for k, _ := c.First(); k != nil; k, _ = c.Next() {
				if bytes.Equal(k[1:], key) {
					if err := c.Delete(); err != nil {
						t.Fatal(err)
					}
					return
				}
			}
			t.Fatal("no index entry")
		}, "missing from status index"},
		{"ready index entry removed", func(t *testing.T, tx *bolt.Tx, key []byte) {
			rb := tx.Bucket([]byte("ready")).Bucket([]byte("chk"))
			c := rb.Cursor()
			for k, _ := c.First(); k != nil; k, _ = c.Next() {
				if bytes.Equal(k[8:], key) {
					if err := c.Delete(); err != nil {
						t.Fatal(err)
					}
					return
				}
			}
			t.Fatal("no ready entry")
		}, "missing from ready index"},
		{"counter off by one", func(t *testing.T, tx *bolt.Tx, key []byte) {
			b := tx.Bucket([]byte("counts"))
			k, v := b.Cursor().First()
			if err := b.Put(k, binary.BigEndian.AppendUint64(nil, binary.BigEndian.Uint64(v)+1)); err != nil {
				t.Fatal(err)
			}
		}, "counter"},
		{"ready entry without a task", func(t *testing.T, tx *bolt.Tx, key []byte) {
			ghost := bytes.Clone(key)
			ghost[15] ^= 0xff
			k := binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))
			if err := tx.Bucket([]byte("ready")).Bucket([]byte("chk")).Put(append(k, ghost...), nil); err != nil {
				t.Fatal(err)
			}
		}, "no record"},
		{"task record removed", func(t *testing.T, tx *bolt.Tx, key []byte) {
			if err := tx.Bucket([]byte("tasks")).Delete(key); err != nil {
				t.Fatal(err)
			}
		}, "no record"},
		// Recovery at Open walks the running tasks: a dangling entry
		// there must not bring Open down.
		{"running task's record removed", func(t *testing.T, tx *bolt.Tx, _ []byte) {
			c := tx.Bucket([]byte("index")).Bucket([]byte("chk")).Cursor()
			for k, _ := c.First(); k != nil; k, _ = c.Next() {
				st := task.Statuses[k[0]-1]
				if st == task.Running {
					if err := tx.Bucket([]byte("tasks")).Delete(k[1:]); err != nil {
						t.Fatal(err)
					}
					return
				}
			}
			t.Fatal("no running task")
		}, "no record"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "chk.db")
			q := openAt(t, path, nil)
			// ids[0] runs; ids[1] and ids[2] wait.
			ids := []string{enqueue(t, q, &queue.Job{Target: "chk"})}
			if l := leaseAll(t, q, time.Now(), "chk"); len(l) != 1 {
				t.Fatalf("leased %d", len(l))
			}
			for range 2 {
				ids = append(ids, enqueue(t, q, &queue.Job{Target: "chk"}))
			}
			if err := q.Check(); err != nil {
				t.Fatalf("Check of a sound database: %v", err)
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}

			db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			key := ulid.MustParseStrict(ids[1])
			if err := db.Update(func(tx *bolt.Tx) error { c.damage(t, tx, key[:]); return nil }); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}

			q, err = queue.Open(path, &queue.Options{Logger: discard})
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			err = q.Check()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Check = %v, want a report of %q", err, c.want)
			}
			// Writes that walk the indexes survive the damage: they may
			// fail, but never panic.
			_, _ = q.Invalidate(ctx, nil)
			_, _ = q.Lease(ctx, time.Now().Add(time.Hour), []queue.LeaseRequest{{Target: "chk", Max: 10}})
		})
	}
}

// editClosed closes q and changes its database file with fn, as damage or
// an older version would have left it.
func editClosed(t *testing.T, q *queue.Queue, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(fn)
	if cerr := db.Close(); err != nil || cerr != nil {
		t.Fatal(err, cerr)
	}
}
