package postgres_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/queue/postgres"
	"github.com/offload-go/offload/task"
)

var ctx = context.Background()

func job(target string) *queue.Job {
	return &queue.Job{Target: target, Request: &reqcodec.Request{Method: http.MethodPost, RequestURI: "/x", Body: []byte("b"), BodySize: 1}}
}

func mustEnqueue(t *testing.T, q queue.Backend, j *queue.Job) string {
	t.Helper()
	r, err := q.Enqueue(ctx, j)
	if err != nil {
		t.Fatal(err)
	}
	return r.ID
}

func leaseAll(t *testing.T, q queue.Backend, target string) []*queue.Lease {
	t.Helper()
	res, err := q.Lease(ctx, time.Now(), []queue.LeaseRequest{{Target: target, Max: 100}})
	if err != nil {
		t.Fatal(err)
	}
	return res.Leases
}

func status(t *testing.T, q queue.Backend, id string) *task.Task {
	t.Helper()
	tk, err := task.Query(ctx, q, id)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// eventually polls cond until it holds, failing after limit. Lease
// expiry is wall-clock time in the database, so these tests wait for it.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Replicas that start together on a new schema migrate it once, in turn;
// a schema migrated by a newer version is refused.
func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	var wg sync.WaitGroup
	qs := make([]*postgres.Queue, 6)
	errs := make([]error, len(qs))
	for i := range qs {
		wg.Go(func() {
			qs[i], errs[i] = postgres.Open(ctx, dbURL(t), &postgres.Options{Schema: schema, Logger: testLogger(t)})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Open %d: %v", i, err)
		}
		defer qs[i].Close()
	}
	var versions, tables int
	if err := admin.pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "schema_migrations"}.Sanitize()).Scan(&versions); err != nil {
		t.Fatal(err)
	}
	if err := admin.pool.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = $1", schema).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if versions != postgres.Migrations || tables != 7 {
		t.Errorf("%d migrations recorded, %d tables; want %d and 7", versions, tables, postgres.Migrations)
	}
	// All six work on the one schema.
	id := mustEnqueue(t, qs[0], job("m"))
	if tk := status(t, qs[5], id); tk.Status != task.Enqueued {
		t.Errorf("task is %s", tk.Status)
	}

	if _, err := admin.pool.Exec(ctx, "INSERT INTO "+pgx.Identifier{schema, "schema_migrations"}.Sanitize()+" (version) VALUES (999)"); err != nil {
		t.Fatal(err)
	}
	if q, err := postgres.Open(ctx, dbURL(t), &postgres.Options{Schema: schema}); !errors.Is(err, postgres.ErrSchemaTooNew) {
		if q != nil {
			q.Close()
		}
		t.Errorf("Open on a newer schema: %v, want ErrSchemaTooNew", err)
	}
}

// A schema that an older release made is brought up to date, its tasks
// kept.
func TestMigrateUpgrade(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	if err := postgres.MigrateTo(ctx, dbURL(t), schema, 1); err != nil {
		t.Fatal(err)
	}
	var key [16]byte
	key[0] = 1
	insert := "INSERT INTO " + pgx.Identifier{schema, "tasks"}.Sanitize() + ` (key, target, status, created_at, enqueued_at, ready_at, request)
		VALUES ($1, 'old', 1, now(), now(), now(), $2)`
	head := reqcodec.Append(nil, &reqcodec.Request{Method: http.MethodGet, RequestURI: "/old"})
	if _, err := admin.pool.Exec(ctx, insert, key, head); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.pool.Exec(ctx, "INSERT INTO "+pgx.Identifier{schema, "counts"}.Sanitize()+" VALUES ('old', 1, 0, 1)"); err != nil {
		t.Fatal(err)
	}
	q := openAt(t, schema, nil)
	var version int
	if err := admin.pool.QueryRow(ctx, "SELECT max(version) FROM "+pgx.Identifier{schema, "schema_migrations"}.Sanitize()).Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version != postgres.Migrations {
		t.Errorf("schema at version %d after Open, want %d", version, postgres.Migrations)
	}
	ls := leaseAll(t, q, "old")
	if len(ls) != 1 || ls[0].Request.RequestURI != "/old" {
		t.Fatalf("the old task: %+v", ls)
	}
	if _, err := q.Finish(ctx, ls[0], queue.Outcome{Status: task.Succeeded}); err != nil {
		t.Fatal(err)
	}
}

// Invalidate leaves alone the tasks of a target that another live replica
// runs (a rolling deploy that adds a target), and gives up on those of a
// target that none runs.
func TestInvalidateAcrossReplicas(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	a, b := openAt(t, schema, nil), openAt(t, schema, nil)
	x, y, z := mustEnqueue(t, a, job("x")), mustEnqueue(t, a, job("y")), mustEnqueue(t, a, job("z"))
	if n, err := a.Invalidate(ctx, []string{"x", "y"}); err != nil || n != 1 {
		t.Fatalf("a: Invalidate = %d, %v; want z's task", n, err)
	}
	if n, err := b.Invalidate(ctx, []string{"y"}); err != nil || n != 0 {
		t.Fatalf("b: Invalidate = %d, %v; want none (a runs x)", n, err)
	}
	if st := status(t, b, x).Status; st != task.Enqueued {
		t.Errorf("x's task is %s, want Enqueued", st)
	}
	if st := status(t, b, z).Status; st != task.Invalid {
		t.Errorf("z's task is %s, want Invalid", st)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Invalidate(ctx, []string{"y"}); err != nil || n != 1 {
		t.Fatalf("b after a closed: Invalidate = %d, %v; want x's task", n, err)
	}
	if st := status(t, b, y).Status; st != task.Enqueued {
		t.Errorf("y's task is %s, want Enqueued", st)
	}
}

// A replica that died with a task Stopping leaves it to a replica whose
// scheduler has registered its targets, and with them their destinations:
// a reaper that ended it at Open, before those were set, lost its
// onFailure delivery. Its Running tasks are reaped at once, as ever.
func TestReapEndsStoppingTasksOnceRegistered(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	opts := &postgres.Options{LeaseTimeout: time.Second, HeartbeatInterval: 100 * time.Millisecond}
	a := openAt(t, schema, opts)
	a.SetDestinations("sd", false, true)
	stopped, running := mustEnqueue(t, a, job("sd")), mustEnqueue(t, a, job("sd"))
	if n := len(leaseAll(t, a, "sd")); n != 2 { // one lease: both expire together
		t.Fatalf("leased %d; want 2", n)
	}
	if _, err := task.Stop(ctx, a, stopped); err != nil {
		t.Fatal(err)
	}
	a.Crash()

	b := openAt(t, schema, opts) // its scheduler has not started yet
	eventually(t, 10*time.Second, "the running task reaped", func() bool {
		if err := b.Reap(); err != nil {
			t.Fatal(err)
		}
		return status(t, b, running).Status == task.Retrying
	})
	if tk := status(t, b, stopped); tk.Status != task.Stopping {
		t.Fatalf("before the scheduler registered its targets the stopped task is %s; want Stopping", tk.Status)
	}
	b.SetDestinations("sd", false, true)
	if _, err := b.Invalidate(ctx, []string{"sd"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the stopped task ended", func() bool { return status(t, b, stopped).Status == task.Stopped })
	ds, _, err := b.PendingDeliveries(ctx, time.Now(), 10, func(string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	if tk := status(t, b, stopped); len(tk.Deliveries) != 1 || len(ds) != 1 || ds[0].TaskID != stopped || ds[0].Destination != task.OnFailure {
		t.Errorf("stopped task's deliveries %+v, %d pending; want its onFailure delivery", tk.Deliveries, len(ds))
	}
}

// A task whose attempt died with its replica, reaped by a replica that
// runs other targets, waits (Retrying) for a replica that runs its target:
// the one that died, restarted. Its Stopping task is left for that replica
// too, which ends it with the delivery only it knows of.
func TestReapLeavesOtherReplicasTargets(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	opts := &postgres.Options{LeaseTimeout: time.Second, HeartbeatInterval: 100 * time.Millisecond}
	a, b := openAt(t, schema, opts), openAt(t, schema, opts)
	if _, err := a.Invalidate(ctx, []string{"x"}); err != nil {
		t.Fatal(err)
	}
	b.SetDestinations("y", false, true)
	if _, err := b.Invalidate(ctx, []string{"x", "y"}); err != nil {
		t.Fatal(err)
	}
	running, stopped := mustEnqueue(t, b, job("y")), mustEnqueue(t, b, job("y"))
	if n := len(leaseAll(t, b, "y")); n != 2 {
		t.Fatalf("leased %d; want 2", n)
	}
	if _, err := task.Stop(ctx, b, stopped); err != nil {
		t.Fatal(err)
	}
	b.Crash()
	eventually(t, 10*time.Second, "reaped by a", func() bool {
		if err := a.Reap(); err != nil {
			t.Fatal(err)
		}
		return status(t, a, running).Status != task.Running
	})
	if tk := status(t, a, running); tk.Status != task.Retrying {
		t.Errorf("b's running task, reaped by a: %s (%q); want Retrying", tk.Status, tk.LastError)
	}
	if tk := status(t, a, stopped); tk.Status != task.Stopping {
		t.Errorf("b's stopping task after a's reap: %s; want Stopping, left for a replica that runs y", tk.Status)
	}
	b2 := openAt(t, schema, opts) // b restarts
	b2.SetDestinations("y", false, true)
	if _, err := b2.Invalidate(ctx, []string{"x", "y"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the stopped task ended", func() bool { return status(t, b2, stopped).Status == task.Stopped })
	if tk := status(t, b2, stopped); len(tk.Deliveries) != 1 || tk.Deliveries[0].Destination != task.OnFailure {
		t.Errorf("stopped task's deliveries %+v; want its onFailure delivery", tk.Deliveries)
	}
	if err := b2.Check(ctx); err != nil {
		t.Error(err)
	}
}

func TestOpenOptions(t *testing.T) {
	t.Parallel()
	url := dbURL(t)
	for _, o := range []postgres.Options{
		{LeaseTimeout: -time.Second},
		{LeaseTimeout: 10 * time.Millisecond},
		{LeaseTimeout: time.Second, HeartbeatInterval: 600 * time.Millisecond},
		{Schema: string(make([]byte, 60))},
	} {
		if q, err := postgres.Open(ctx, url, &o); err == nil {
			q.Close()
			t.Errorf("Open(%+v) succeeded", o)
		}
	}
	if _, err := postgres.Open(ctx, "postgres://nobody@127.0.0.1:1/none?connect_timeout=1", nil); err == nil {
		t.Error("Open of an unreachable server succeeded")
	}
}

// The heartbeat keeps a running attempt's lease alive well past
// LeaseTimeout while another replica reaps expired leases.
func TestHeartbeatKeepsLease(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	opts := &postgres.Options{LeaseTimeout: 2 * time.Second, HeartbeatInterval: 100 * time.Millisecond}
	a, b := openAt(t, schema, opts), openAt(t, schema, opts)
	_ = b // reaps
	id := mustEnqueue(t, a, job("hb"))
	ls := leaseAll(t, a, "hb")
	if len(ls) != 1 {
		t.Fatalf("leased %d", len(ls))
	}
	time.Sleep(5 * time.Second) // the lease's life is the subject: let it be tested
	if tk := status(t, b, id); tk.Status != task.Running || tk.Attempts != 1 {
		t.Fatalf("after 2.5 lease timeouts with heartbeats the task is %s, attempt %d", tk.Status, tk.Attempts)
	}
	if st, err := a.Finish(ctx, ls[0], queue.Outcome{Status: task.Succeeded}); err != nil || st != task.Succeeded {
		t.Fatalf("Finish = %s, %v", st, err)
	}
}

// A replica whose lease expired (here: its heartbeat is bypassed by
// expiring the lease in the database) loses the task to the reaper; its
// Finish and Report are refused, its attempt is told to stop, and the
// task runs again as a new attempt. A lease is fenced on its owner too.
func TestLostLease(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	opts := &postgres.Options{LeaseTimeout: time.Second, HeartbeatInterval: 100 * time.Millisecond}
	a, b := openAt(t, schema, opts), openAt(t, schema, opts)
	var stops atomic.Int32
	a.Subscribe(func(n queue.Notice) {
		if n.Kind == queue.StopRequested {
			stops.Add(1)
		}
	})
	id := mustEnqueue(t, a, job("lost"))
	la := leaseAll(t, a, "lost")[0]
	a.PauseHeartbeat(true) // a stalls; its lease expires; b reaps it
	eventually(t, 15*time.Second, "reaped", func() bool { return status(t, b, id).Status == task.Retrying })
	tk := status(t, b, id)
	if tk.Attempts != 1 || !hasEvent(tk, "process lost during attempt 1") {
		t.Errorf("reaped task: attempts %d, events %+v", tk.Attempts, tk.Events)
	}
	a.PauseHeartbeat(false) // a wakes up and finds its lease gone
	eventually(t, 15*time.Second, "stop notice for the lost attempt", func() bool { return stops.Load() > 0 })
	if err := a.Report(ctx, la, &queue.Report{Progress: &task.Progress{Percent: 1}}); !errors.Is(err, task.ErrLeaseLost) {
		t.Errorf("Report of a lost lease: %v, want ErrLeaseLost", err)
	}
	lb := leaseAll(t, b, "lost")
	if len(lb) != 1 || lb[0].Attempt != 2 {
		t.Fatalf("b leased %+v", lb)
	}
	if _, err := a.Finish(ctx, la, queue.Outcome{Status: task.Succeeded}); !errors.Is(err, task.ErrLeaseLost) {
		t.Errorf("Finish of a lost lease: %v, want ErrLeaseLost", err)
	}
	// The right attempt under another owner is refused as well.
	forged := *lb[0]
	forged.Key = append(slices.Clone(lb[0].Key[:16]), la.Key[16:]...)
	if _, err := b.Finish(ctx, &forged, queue.Outcome{Status: task.Succeeded}); !errors.Is(err, task.ErrLeaseLost) {
		t.Errorf("Finish under another owner: %v, want ErrLeaseLost", err)
	}
	if st, err := b.Finish(ctx, lb[0], queue.Outcome{Status: task.Succeeded}); err != nil || st != task.Succeeded {
		t.Fatalf("Finish by the new owner = %s, %v", st, err)
	}
}

// A replica that stalled past its lease and, waking, leased the same task
// again (its scheduler was quicker than its heartbeat) holds two attempts
// of it: the heartbeat asks to stop the lost one, by its attempt, and
// leaves the new one alone.
func TestLostAttemptStoppedAfterReLease(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	opts := &postgres.Options{LeaseTimeout: time.Second, HeartbeatInterval: 100 * time.Millisecond}
	a, b := openAt(t, schema, opts), openAt(t, schema, opts)
	stops := make(chan queue.Notice, 100)
	a.Subscribe(func(n queue.Notice) {
		if n.Kind == queue.StopRequested {
			stops <- n
		}
	})
	id := mustEnqueue(t, a, job("relost"))
	l1 := leaseAll(t, a, "relost")[0]
	a.PauseHeartbeat(true)
	eventually(t, 10*time.Second, "reaped", func() bool {
		if err := b.Reap(); err != nil {
			t.Fatal(err)
		}
		return status(t, b, id).Status == task.Retrying
	})
	l2 := leaseAll(t, a, "relost")
	if len(l2) != 1 || l2[0].Attempt != 2 {
		t.Fatalf("leased again: %+v; want attempt 2", l2)
	}
	a.PauseHeartbeat(false)
	select {
	case n := <-stops:
		if n.ID != id || n.Attempt != 1 {
			t.Errorf("stop notice %+v; want one for attempt 1 of %s", n, id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the lost attempt was never asked to stop")
	}
	if _, err := a.Finish(ctx, l1, queue.Outcome{Status: task.Succeeded}); !errors.Is(err, task.ErrLeaseLost) {
		t.Errorf("Finish of the lost attempt: %v; want ErrLeaseLost", err)
	}
	if _, err := a.Finish(ctx, l2[0], queue.Outcome{Status: task.Succeeded}); err != nil {
		t.Fatal(err)
	}
	for len(stops) > 0 {
		if n := <-stops; n.Attempt != 1 {
			t.Errorf("stop notice %+v for an attempt that held its lease", n)
		}
	}
}

// Close hands back the leases still held: their tasks are ready at once.
func TestCloseHandsBackLeases(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	a, b := openAt(t, schema, nil), openAt(t, schema, nil)
	running := mustEnqueue(t, a, job("close"))
	stopping := mustEnqueue(t, a, job("close"))
	if n := len(leaseAll(t, a, "close")); n != 2 {
		t.Fatalf("leased %d", n)
	}
	if _, err := task.Stop(ctx, b, stopping); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if tk := status(t, b, running); tk.Status != task.Retrying || !hasEvent(tk, "replica closed") {
		t.Errorf("running task after Close: %s %+v", tk.Status, tk.Events)
	}
	if tk := status(t, b, stopping); tk.Status != task.Stopped {
		t.Errorf("stopping task after Close: %s", tk.Status)
	}
	if ls := leaseAll(t, b, "close"); len(ls) != 1 || ls[0].ID != running || ls[0].Attempt != 2 {
		t.Errorf("b leased %+v", ls)
	}
	if _, err := a.Enqueue(ctx, job("close")); !errors.Is(err, task.ErrClosed) {
		t.Errorf("Enqueue after Close: %v", err)
	}
	// The trigger answers it 503 shutting_down, not store_unavailable.
	if _, err := a.CreateBlob(); !errors.Is(err, task.ErrClosed) {
		t.Errorf("CreateBlob after Close: %v; want ErrClosed", err)
	}
}

// A delivery is sent by one replica at a time: the one that claimed it,
// until it records the try or dies.
func TestDeliveryClaims(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	opts := &postgres.Options{LeaseTimeout: time.Second, HeartbeatInterval: 100 * time.Millisecond}
	a, b := openAt(t, schema, opts), openAt(t, schema, opts)
	for _, q := range []*postgres.Queue{a, b} {
		q.SetDestinations("dl", true, true)
	}
	bNotices := make(chan queue.Notice, 16)
	b.Subscribe(func(n queue.Notice) {
		select {
		case bNotices <- n:
		default:
		}
	})
	id := mustEnqueue(t, a, job("dl"))
	if _, err := a.Finish(ctx, leaseAll(t, a, "dl")[0], queue.Outcome{Status: task.Succeeded}); err != nil {
		t.Fatal(err)
	}
	waitNotice(t, bNotices, queue.DeliveryReady)
	none := func(string) bool { return false }
	da, _, err := a.PendingDeliveries(ctx, time.Now(), 10, none)
	if err != nil || len(da) != 1 || da[0].TaskID != id || da[0].Destination != task.OnSuccess || da[0].Target != "dl" {
		t.Fatalf("a: %+v, %v", da, err)
	}
	db, next, err := b.PendingDeliveries(ctx, time.Now(), 10, none)
	if err != nil || len(db) != 0 || next.IsZero() {
		t.Fatalf("b while a holds the claim: %+v, next %v, %v", db, next, err)
	}
	// a's claim holds as long as a lives; a dies.
	a.Crash()
	eventually(t, 20*time.Second, "b takes over the delivery", func() bool {
		db, _, err = b.PendingDeliveries(ctx, time.Now(), 10, none)
		return err == nil && len(db) == 1
	})
	if err := b.FinishDelivery(ctx, db[0], queue.DeliveryResult{Error: "503", RetryAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	tk := status(t, b, id)
	if len(tk.Deliveries) != 1 || tk.Deliveries[0].Status != task.DeliveryPending || tk.Deliveries[0].Tries != 1 {
		t.Fatalf("deliveries after a failed try: %+v", tk.Deliveries)
	}
	db, next, _ = b.PendingDeliveries(ctx, time.Now(), 10, none)
	if len(db) != 0 || next.Before(time.Now().Add(50*time.Minute)) {
		t.Fatalf("rescheduled delivery: %+v, next %v", db, next)
	}
	db, _, _ = b.PendingDeliveries(ctx, time.Now().Add(2*time.Hour), 10, none)
	if len(db) != 1 || db[0].Tries != 1 {
		t.Fatalf("due again: %+v", db)
	}
	if err := b.FinishDelivery(ctx, db[0], queue.DeliveryResult{}); err != nil {
		t.Fatal(err)
	}
	if err := b.FinishDelivery(ctx, db[0], queue.DeliveryResult{}); err != nil {
		t.Errorf("second FinishDelivery: %v", err)
	}
	tk = status(t, b, id)
	if len(tk.Deliveries) != 1 || tk.Deliveries[0].Status != task.DeliveryDelivered || tk.Deliveries[0].Tries != 2 {
		t.Errorf("deliveries: %+v", tk.Deliveries)
	}
	// The skip func leaves deliveries out.
	id2 := mustEnqueue(t, b, job("dl"))
	if _, err := b.Finish(ctx, leaseAll(t, b, "dl")[0], queue.Outcome{Status: task.Failed}); err != nil {
		t.Fatal(err)
	}
	skipAll := func(string) bool { return true }
	if db, _, _ = b.PendingDeliveries(ctx, time.Now(), 10, skipAll); len(db) != 0 {
		t.Errorf("skipped deliveries returned: %+v", db)
	}
	if db, _, _ = b.PendingDeliveries(ctx, time.Now(), 10, none); len(db) != 1 || db[0].TaskID != id2 || db[0].Destination != task.OnFailure {
		t.Errorf("failure delivery: %+v", db)
	}
}

func waitNotice(t *testing.T, c chan queue.Notice, kind queue.NoticeKind) queue.Notice {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case n := <-c:
			if n.Kind == kind {
				return n
			}
		case <-timeout:
			t.Fatalf("no notice of kind %d", kind)
		}
	}
}

// Notices reach other replicas through LISTEN/NOTIFY, and each replica
// hears its own once.
func TestNotices(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	a, b := openAt(t, schema, nil), openAt(t, schema, nil)
	var mu sync.Mutex
	heard := map[string][]queue.Notice{}
	for name, q := range map[string]*postgres.Queue{"a": a, "b": b} {
		q.Subscribe(func(n queue.Notice) {
			mu.Lock()
			heard[name] = append(heard[name], n)
			mu.Unlock()
		})
	}
	count := func(name string, kind queue.NoticeKind) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, x := range heard[name] {
			if x.Kind == kind {
				n++
			}
		}
		return n
	}
	mustEnqueue(t, a, job("n"))
	eventually(t, 10*time.Second, "b hears of the enqueue", func() bool { return count("b", queue.TaskReady) == 1 })
	id := mustEnqueue(t, b, job("n2"))
	leaseAll(t, b, "n2")
	if _, err := task.Stop(ctx, a, id); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b hears of the stop", func() bool { return count("b", queue.StopRequested) == 1 })
	eventually(t, 10*time.Second, "a hears of b's enqueue", func() bool { return count("a", queue.TaskReady) == 2 })
	time.Sleep(100 * time.Millisecond) // a duplicate would show by now
	for _, name := range []string{"a", "b"} {
		if n := count(name, queue.TaskReady); n != 2 {
			t.Errorf("%s heard %d TaskReady, want 2: its own enqueue and the other's, once each", name, n)
		}
	}
	if n := count("a", queue.StopRequested); n != 1 {
		t.Errorf("a heard %d StopRequested, want its own once", n)
	}
}

// Retention deletes finished tasks (once delivered), their bodies and
// counts; unfinished ones stay.
func TestPurge(t *testing.T) {
	t.Parallel()
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	q := openQueue(t, &postgres.Options{Now: clock, Retention: time.Hour})
	q.SetDestinations("p", true, false)
	done := mustEnqueue(t, q, job("p"))
	if _, err := q.Finish(ctx, leaseAll(t, q, "p")[0], queue.Outcome{Status: task.Succeeded}); err != nil {
		t.Fatal(err)
	}
	failed := mustEnqueue(t, q, job("p"))
	if _, err := q.Finish(ctx, leaseAll(t, q, "p")[0], queue.Outcome{Status: task.Failed}); err != nil {
		t.Fatal(err)
	}
	blob, err := q.CreateBlob()
	if err != nil {
		t.Fatal(err)
	}
	blob.Write(make([]byte, 10))
	if err := blob.Close(); err != nil {
		t.Fatal(err)
	}
	withBlob := job("p")
	withBlob.Request.Blob, withBlob.Request.Body, withBlob.Request.BodySize = blob.Name(), nil, 10
	blobbed := mustEnqueue(t, q, withBlob)
	if _, err := q.Finish(ctx, leaseAll(t, q, "p")[0], queue.Outcome{Status: task.Invalid}); err != nil {
		t.Fatal(err)
	}
	waiting := mustEnqueue(t, q, job("p"))

	if n, err := q.Purge(ctx); err != nil || n != 0 {
		t.Fatalf("Purge before retention = %d, %v", n, err)
	}
	offset.Store(int64(2 * time.Hour))
	if n, err := q.Purge(ctx); err != nil || n != 2 {
		t.Fatalf("Purge = %d, %v; want the two without a pending delivery", n, err)
	}
	for _, id := range []string{failed, blobbed} {
		if _, err := task.Query(ctx, q, id); !errors.Is(err, task.ErrNotFound) {
			t.Errorf("purged %s: %v", id, err)
		}
	}
	status(t, q, done)
	status(t, q, waiting)
	var blobs int
	if err := admin.pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{q.Schema(), "blob_chunks"}.Sanitize()).Scan(&blobs); err != nil {
		t.Fatal(err)
	}
	if blobs != 0 {
		t.Errorf("%d blob chunks left after purging their task", blobs)
	}
	// Delivered: purged on the next pass.
	d, _, err := q.PendingDeliveries(ctx, clock(), 10, func(string) bool { return false })
	if err != nil || len(d) != 1 {
		t.Fatalf("deliveries %+v, %v", d, err)
	}
	if err := q.FinishDelivery(ctx, d[0], queue.DeliveryResult{}); err != nil {
		t.Fatal(err)
	}
	if n, err := q.Purge(ctx); err != nil || n != 1 {
		t.Fatalf("Purge after delivery = %d, %v", n, err)
	}
	counts, err := task.Counts(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if len(counts) != 1 || counts[0] != (task.Count{Target: "p", Status: task.Enqueued, N: 1}) {
		t.Errorf("counts after purge: %+v", counts)
	}
}

// Large bodies go to the database in chunks as they are written, and come
// back whole; abandoned ones are swept.
func TestBlobChunks(t *testing.T) {
	t.Parallel()
	q := openQueue(t, &postgres.Options{BlobChunkSize: 1000, BlobGrace: time.Millisecond})
	body := make([]byte, 10_500)
	_, _ = rand.Read(body)
	blob, err := q.CreateBlob()
	if err != nil {
		t.Fatal(err)
	}
	for rest := body; len(rest) > 0; {
		n := min(len(rest), 333)
		if _, err := blob.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if err := blob.Close(); err != nil {
		t.Fatal(err)
	}
	chunks := func(name string) int {
		var n int
		if err := admin.pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{q.Schema(), "blob_chunks"}.Sanitize()+" WHERE name = $1", name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := chunks(blob.Name()); n != 11 {
		t.Errorf("%d chunks of 1000 bytes for 10500, want 11", n)
	}
	j := job("blob")
	j.Request.Blob, j.Request.Body, j.Request.BodySize = blob.Name(), nil, int64(len(body))
	mustEnqueue(t, q, j)
	// An upload abandoned mid-way, and one closed but never enqueued.
	abandoned, _ := q.CreateBlob()
	abandoned.Write(make([]byte, 2500))
	unused, _ := q.CreateBlob()
	unused.Write([]byte("x"))
	if err := unused.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // past BlobGrace
	if _, err := q.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	if chunks(abandoned.Name()) != 0 || chunks(unused.Name()) != 0 {
		t.Error("abandoned blobs survived the sweep")
	}
	l := leaseAll(t, q, "blob")[0]
	rc, err := q.OpenBody(l)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("read %d bytes (%v), want the %d written", len(got), err, len(body))
	}
	// Remove does not take a blob that a task names.
	if err := blob.Remove(); err != nil {
		t.Fatal(err)
	}
	if chunks(blob.Name()) != 11 {
		t.Error("Remove deleted the body of a task")
	}
}

// A blob shorter than the body its task records (damage, or a bug): the
// lease gets no body (ErrNoBody: the task ends Invalid), not a shorter one.
func TestShortBlob(t *testing.T) {
	t.Parallel()
	q := openQueue(t, nil)
	blob, err := q.CreateBlob()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := blob.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if err := blob.Close(); err != nil {
		t.Fatal(err)
	}
	j := job("short")
	j.Request.Body, j.Request.Blob, j.Request.BodySize = nil, blob.Name(), 1<<20
	mustEnqueue(t, q, j)
	l := leaseAll(t, q, "short")[0]
	if rc, err := q.OpenBody(l); !errors.Is(err, queue.ErrNoBody) {
		if rc != nil {
			rc.Close()
		}
		t.Errorf("OpenBody of a 1000-byte blob for a body of 1 MiB: %v; want ErrNoBody", err)
	}
}

// Strings that handlers and clients write (errors, logs, progress,
// headers, idempotency keys, reasons) may hold NUL and invalid UTF-8,
// which text and jsonb refuse: they are stored, cleaned, without failing
// the batch that carries other tasks' writes; idempotency keys stay exact.
func TestHostileStrings(t *testing.T) {
	t.Parallel()
	q := openQueue(t, nil)
	q.SetDestinations("h", false, true)
	const bad = "a\x00b\xffc\xfe"
	k1 := job("h")
	k1.IdempotencyKey, k1.Fingerprint = "key\x00\xff", [32]byte{1}
	r1, err := q.Enqueue(ctx, k1)
	if err != nil {
		t.Fatal(err)
	}
	k2 := job("h")
	k2.IdempotencyKey, k2.Fingerprint = "key\x00\xfe", [32]byte{2} // cleans to the same text; a different key
	if r2, err := q.Enqueue(ctx, k2); err != nil || r2.Replayed || r2.ID == r1.ID {
		t.Fatalf("a different key: %+v, %v", r2, err)
	}
	if r, err := q.Enqueue(ctx, k1); err != nil || !r.Replayed || r.ID != r1.ID {
		t.Fatalf("the same key again: %+v, %v", r, err)
	}
	ls := leaseAll(t, q, "h")
	if len(ls) != 2 {
		t.Fatalf("leased %d", len(ls))
	}
	// One batch-mate writes hostile strings everywhere; the other is plain.
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := q.Report(ctx, ls[0], &queue.Report{Progress: &task.Progress{Percent: 5, Message: bad},
			Logs: []task.LogRecord{{Time: time.Now(), Level: bad, Message: bad}}}); err != nil {
			t.Errorf("Report: %v", err)
		}
		_, err := q.Finish(ctx, ls[0], queue.Outcome{Status: task.Failed, Error: bad, Detail: bad,
			Response: &task.Response{StatusCode: 500, Header: http.Header{"X-" + bad: {bad}}, Body: []byte(bad), BodySize: int64(len(bad))}})
		if err != nil {
			t.Errorf("Finish: %v", err)
		}
	})
	wg.Go(func() {
		if _, err := q.Finish(ctx, ls[1], queue.Outcome{Status: task.Succeeded}); err != nil {
			t.Errorf("plain Finish: %v", err)
		}
	})
	wg.Wait()
	tk := status(t, q, ls[0].ID)
	if tk.Status != task.Failed || tk.LastError != "a\uFFFDb\uFFFDc\uFFFD" || string(tk.Response.Body) != bad ||
		tk.Logs[0].Message != tk.LastError || tk.Progress.Message != tk.LastError {
		t.Errorf("stored %+v", tk)
	}
	d, _, err := q.PendingDeliveries(ctx, time.Now(), 10, func(string) bool { return false })
	if err != nil || len(d) != 1 {
		t.Fatalf("deliveries %+v, %v", d, err)
	}
	if err := q.FinishDelivery(ctx, d[0], queue.DeliveryResult{Error: bad}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.RetryTask(ctx, ls[0].ID, bad); err != nil {
		t.Fatal(err)
	}
}

// A database that stops answering fails writes within Options.Timeout
// (the trigger answers 503) instead of hanging them; then they go through.
func TestTimeout(t *testing.T) {
	t.Parallel()
	q := openQueue(t, &postgres.Options{Timeout: 500 * time.Millisecond})
	tx, err := admin.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{q.Schema(), "tasks"}.Sanitize()+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = q.Enqueue(ctx, job("stuck"))
	if err == nil || time.Since(start) > 5*time.Second {
		t.Errorf("Enqueue against a locked table: %v after %s; want an error within the timeout", err, time.Since(start))
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	mustEnqueue(t, q, job("stuck"))
}
