package postgres

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// Enqueue implements queue.Backend. The request is encoded on the
// caller's goroutine; the committer writes concurrent enqueues in one
// multi-row INSERT, in one transaction.
func (q *Queue) Enqueue(ctx context.Context, job *queue.Job) (queue.Receipt, error) {
	if err := queue.CheckJob(job); err != nil {
		return queue.Receipt{}, fmt.Errorf("postgres: enqueue: %w", err)
	}
	now := q.now()
	o := &enqueueOp{job: job, key: task.NewULID(now), created: now, readyAt: job.ReadyAt.UTC().Truncate(time.Microsecond)}
	if o.readyAt.Before(now) {
		o.readyAt = now
	}
	head := *job.Request
	head.Body = nil
	o.head = reqcodec.Append(make([]byte, 0, reqcodec.Size(&head)), &head)
	if err := q.submit(ctx, o); err != nil {
		return queue.Receipt{}, err
	}
	return o.receipt, o.err
}

type enqueueOp struct {
	job     *queue.Job
	key     [16]byte
	created time.Time
	readyAt time.Time
	head    []byte

	receipt queue.Receipt
	err     error
	insert  bool       // decided to store a row
	dep     *enqueueOp // replayed an earlier op of the same batch
}

func (o *enqueueOp) reset()         { o.receipt, o.err, o.insert, o.dep = queue.Receipt{}, nil, false, nil }
func (o *enqueueOp) fail(err error) { o.err = err }

func (o *enqueueOp) id() string {
	if o.job.ID != "" {
		return o.job.ID
	}
	return keyID(o.key)
}

// Finish implements queue.Backend. It is fenced on the attempt and on the
// lease owner: an attempt whose lease expired (and whose task another
// replica may have leased since) gets task.ErrLeaseLost.
func (q *Queue) Finish(ctx context.Context, l *queue.Lease, out queue.Outcome) (task.Status, error) {
	switch out.Status {
	case task.Succeeded, task.Failed, task.Retrying, task.Expired, task.Invalid, task.Enqueued:
	default:
		return "", fmt.Errorf("postgres: finish %s: %w: outcome %s", l.ID, task.ErrInvalidTransition, out.Status)
	}
	o := &finishOp{lease: l, out: out}
	if !parseLeaseKey(l.Key, &o.key, &o.owner) {
		return "", fmt.Errorf("postgres: finish %s attempt %d: %w (not a lease of this backend)", l.ID, l.Attempt, task.ErrLeaseLost)
	}
	if err := q.submit(ctx, o); err != nil {
		return "", err
	}
	// A finished attempt, or one that lost its lease, needs it no more. A
	// failed commit keeps it, heartbeat and all, for the caller to try
	// again (the scheduler does); Close hands it back.
	if o.err == nil || errors.Is(o.err, task.ErrLeaseLost) {
		q.release(o.key, l.Attempt)
	}
	return o.final, o.err
}

type finishOp struct {
	lease      *queue.Lease
	key, owner [16]byte
	out        queue.Outcome
	final      task.Status
	err        error
}

func (o *finishOp) reset()         { o.final, o.err = "", nil }
func (o *finishOp) fail(err error) { o.err = err }

// Report implements queue.Backend, fenced as Finish is.
func (q *Queue) Report(ctx context.Context, l *queue.Lease, r *queue.Report) error {
	if r == nil || (r.Progress == nil && len(r.Logs) == 0) {
		return nil
	}
	o := &reportOp{lease: l, report: r}
	if !parseLeaseKey(l.Key, &o.key, &o.owner) {
		return fmt.Errorf("postgres: report %s attempt %d: %w (not a lease of this backend)", l.ID, l.Attempt, task.ErrLeaseLost)
	}
	if err := q.submit(ctx, o); err != nil {
		return err
	}
	return o.err
}

type reportOp struct {
	lease      *queue.Lease
	key, owner [16]byte
	report     *queue.Report
	err        error
}

func (o *reportOp) reset()         { o.err = nil }
func (o *reportOp) fail(err error) { o.err = err }

// FinishDelivery implements queue.Backend.
func (q *Queue) FinishDelivery(ctx context.Context, d *queue.Delivery, res queue.DeliveryResult) error {
	o := &deliveryOp{d: d, res: res}
	if len(d.Key) != 25 {
		return fmt.Errorf("postgres: finish delivery of %s: not a delivery of this backend", d.TaskID)
	}
	o.id = int64(binary.BigEndian.Uint64(d.Key))
	copy(o.key[:], d.Key[8:24])
	if err := q.submit(ctx, o); err != nil {
		return err
	}
	return o.err
}

type deliveryOp struct {
	d   *queue.Delivery
	id  int64
	key [16]byte
	res queue.DeliveryResult
	err error
}

func (o *deliveryOp) reset()         { o.err = nil }
func (o *deliveryOp) fail(err error) { o.err = err }

// leaseKey is a Lease's Key: the task's key and the lease owner.
func (q *Queue) leaseKey(key [16]byte) []byte {
	return append(append(make([]byte, 0, 32), key[:]...), q.owner[:]...)
}

func parseLeaseKey(b []byte, key, owner *[16]byte) bool {
	if len(b) != 32 {
		return false
	}
	copy(key[:], b[:16])
	copy(owner[:], b[16:])
	return true
}

type idemKey struct{ target, key string }

type existingTask struct {
	id string
	fp []byte
}

// preread is what the committer reads before it decides: rows to change,
// outbox entries, and for enqueues the IDs and keys already taken and the
// live counts of targets with a MaxQueued.
type preread struct {
	cids      map[string]existingTask
	idem      map[idemKey]existingTask
	live      map[string]int64
	outbox    map[int64]bool
	batchCID  map[string]*enqueueOp
	batchIdem map[idemKey]*enqueueOp
}

func newPreread() *preread {
	return &preread{
		cids: map[string]existingTask{}, idem: map[idemKey]existingTask{}, live: map[string]int64{},
		outbox: map[int64]bool{}, batchCID: map[string]*enqueueOp{}, batchIdem: map[idemKey]*enqueueOp{},
	}
}

// queueExisting queues the look-up of the caller IDs and idempotency keys
// of ops.
func (q *Queue) queueExisting(b *pgx.Batch, ops []*enqueueOp, pre *preread) {
	var cids, idemTargets []string
	var idemKeys [][]byte
	for _, o := range ops {
		if o.job.ID != "" {
			cids = append(cids, o.job.ID)
		}
		if o.job.IdempotencyKey != "" {
			idemTargets = append(idemTargets, o.job.Target)
			idemKeys = append(idemKeys, []byte(o.job.IdempotencyKey))
		}
	}
	if len(cids) == 0 && len(idemKeys) == 0 {
		return
	}
	b.Queue(q.sql.existing, cids, idemTargets, idemKeys).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var (
				key         [16]byte
				cid, target *string
				idem, fp    []byte
				e           existingTask
			)
			if err := rows.Scan(&key, &cid, &target, &idem, &fp); err != nil {
				return err
			}
			e.id, e.fp = keyID(key), fp
			if cid != nil {
				e.id = *cid
				pre.cids[*cid] = e
			}
			if idem != nil && target != nil {
				pre.idem[idemKey{*target, string(idem)}] = e
			}
		}
		return rows.Err()
	})
}

// commitBatch writes one batch of ops in one transaction: it locks the
// rows the ops change (in key order) and reads what the enqueues must
// check, decides every op in Go as the bbolt queue does, then writes the
// new rows, the changed rows, the outbox and the counters, and commits.
// A batch of plain enqueues is one round trip.
func (q *Queue) commitBatch(ctx context.Context, ops []op) ([]queue.Notice, error) {
	t := q.newTxn(shardCommitter)
	pre := newPreread()
	var enqs []*enqueueOp
	keySet := map[[16]byte]bool{}
	var outboxIDs []int64
	needPre := false
	for _, o := range ops {
		switch o := o.(type) {
		case *enqueueOp:
			enqs = append(enqs, o)
			needPre = needPre || o.job.ID != "" || o.job.IdempotencyKey != "" || o.job.MaxQueued > 0
		case *finishOp:
			keySet[o.key] = true
		case *reportOp:
			keySet[o.key] = true
		case *deliveryOp:
			keySet[o.key] = true
			outboxIDs = append(outboxIDs, o.id)
		}
	}
	s, err := q.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer s.close()

	b := &pgx.Batch{}
	if len(keySet) > 0 {
		keys := make([][16]byte, 0, len(keySet))
		for k := range keySet {
			keys = append(keys, k)
		}
		b.Queue(q.sql.lockRows, keys).Query(func(rows pgx.Rows) error {
			return collectRows(rows, nil, func(r *row) { t.rows[r.key] = r })
		})
	}
	if len(outboxIDs) > 0 {
		b.Queue(q.sql.lockOutbox, outboxIDs).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var id int64
				if err := rows.Scan(&id); err != nil {
					return err
				}
				pre.outbox[id] = true
			}
			return rows.Err()
		})
	}
	if needPre {
		q.queueExisting(b, enqs, pre)
		var targets []string
		for _, o := range enqs {
			if o.job.MaxQueued > 0 && !slices.Contains(targets, o.job.Target) {
				targets = append(targets, o.job.Target)
			}
		}
		if len(targets) > 0 {
			locks := make([]int64, len(targets))
			for i, target := range targets {
				locks[i] = lockKey("maxqueued/"+target, q.schema)
			}
			slices.Sort(locks)
			b.Queue(q.sql.advisoryLocks, locks)
			b.Queue(q.sql.liveCounts, targets).Query(func(rows pgx.Rows) error {
				for rows.Next() {
					var target string
					var n int64
					if err := rows.Scan(&target, &n); err != nil {
						return err
					}
					pre.live[target] = n
				}
				return rows.Err()
			})
		}
	}
	if b.Len() > 0 {
		if err := s.send(b); err != nil {
			return nil, err
		}
	}

	for _, o := range ops {
		switch o := o.(type) {
		case *enqueueOp:
			t.enqueue(o, pre)
		case *finishOp:
			t.finish(o)
		case *reportOp:
			t.report(o)
		case *deliveryOp:
			t.finishDelivery(o, pre)
		}
	}

	b = &pgx.Batch{}
	var inserts []*enqueueOp
	racy := false
	for _, o := range enqs {
		if o.insert {
			inserts = append(inserts, o)
			racy = racy || o.job.ID != "" || o.job.IdempotencyKey != ""
		}
	}
	if len(inserts) > 0 && racy {
		// Another replica may have taken a caller ID or key since it was
		// read: such rows are skipped, and their ops decided again.
		inserted := map[[16]byte]bool{}
		b.Queue(q.sql.insertOrSkip, insertArgs(inserts)...).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var k [16]byte
				if err := rows.Scan(&k); err != nil {
					return err
				}
				inserted[k] = true
			}
			return rows.Err()
		})
		if err := s.send(b); err != nil {
			return nil, err
		}
		b = &pgx.Batch{}
		if err := q.redoSkipped(s, t, enqs, inserted); err != nil {
			return nil, err
		}
	} else if len(inserts) > 0 {
		b.Queue(q.sql.insert, insertArgs(inserts)...)
	}
	if err := t.write(b); err != nil {
		return nil, err
	}
	if err := s.commit(b); err != nil {
		return nil, err
	}
	return t.finalNotices(), nil
}

func insertArgs(ops []*enqueueOp) []any {
	n := len(ops)
	keys := make([][16]byte, n)
	cids, targets, blobs := make([]*string, n), make([]string, n), make([]*string, n)
	idems := make([][]byte, n)
	created, ready := make([]time.Time, n), make([]time.Time, n)
	fps, heads, bodies := make([][]byte, n), make([][]byte, n), make([][]byte, n)
	for i, o := range ops {
		j := o.job
		keys[i], targets[i], created[i], ready[i], heads[i] = o.key, j.Target, o.created, o.readyAt, o.head
		if j.ID != "" {
			cids[i] = &j.ID
		}
		if j.IdempotencyKey != "" {
			idems[i] = []byte(j.IdempotencyKey)
			fps[i] = j.Fingerprint[:]
		}
		if j.Request.Blob != "" {
			blobs[i] = &j.Request.Blob
		} else {
			bodies[i] = j.Request.Body
			if bodies[i] == nil {
				bodies[i] = []byte{}
			}
		}
	}
	return []any{keys, cids, targets, created, ready, idems, fps, blobs, heads, bodies}
}

// redoSkipped decides again the enqueues whose rows the INSERT skipped
// (another replica committed the same caller ID or key first), and those
// that replayed them.
func (q *Queue) redoSkipped(s *session, t *txn, enqs []*enqueueOp, inserted map[[16]byte]bool) error {
	var redo []*enqueueOp
	for _, o := range enqs {
		if o.insert && !inserted[o.key] {
			o.insert = false
			t.count(o.job.Target, task.Enqueued, -1)
			redo = append(redo, o)
		}
	}
	if len(redo) == 0 {
		return nil
	}
	for _, o := range enqs {
		if o.dep != nil && !o.dep.insert {
			redo = append(redo, o)
		}
	}
	pre := newPreread()
	b := &pgx.Batch{}
	q.queueExisting(b, redo, pre)
	if err := s.send(b); err != nil {
		return err
	}
	for _, o := range redo {
		o.dep, o.receipt, o.err = nil, queue.Receipt{}, nil
		j := o.job
		if e, ok := pre.idem[idemKey{j.Target, j.IdempotencyKey}]; ok && j.IdempotencyKey != "" {
			if !bytes.Equal(e.fp, j.Fingerprint[:]) {
				o.err = task.ErrIdempotencyMismatch
			} else {
				o.receipt = queue.Receipt{ID: e.id, Replayed: true}
			}
			continue
		}
		if _, ok := pre.cids[j.ID]; ok && j.ID != "" {
			o.err = fmt.Errorf("%w: %s", task.ErrConflict, j.ID)
			continue
		}
		o.err = errors.New("postgres: enqueue: lost a race with another replica; try again")
	}
	return nil
}

// live is target's unfinished tasks as read plus this transaction's
// changes so far.
func (t *txn) live(target string, pre *preread) int64 {
	n := pre.live[target]
	for _, s := range task.Statuses {
		if !s.Terminal() {
			n += t.counts[countKey{target, s}]
		}
	}
	return n
}

func (t *txn) enqueue(o *enqueueOp, pre *preread) {
	j := o.job
	ik := idemKey{j.Target, j.IdempotencyKey}
	// The idempotency key first: a retried request that also names its
	// task is answered with the first acceptance, not a conflict.
	if j.IdempotencyKey != "" {
		if e, ok := pre.idem[ik]; ok {
			if !bytes.Equal(e.fp, j.Fingerprint[:]) {
				o.err = task.ErrIdempotencyMismatch
				return
			}
			o.receipt = queue.Receipt{ID: e.id, Replayed: true}
			return
		}
		if p, ok := pre.batchIdem[ik]; ok {
			if p.job.Fingerprint != j.Fingerprint {
				o.err = task.ErrIdempotencyMismatch
				return
			}
			o.receipt, o.dep = queue.Receipt{ID: p.id(), Replayed: true}, p
			return
		}
	}
	if j.ID != "" {
		if _, ok := pre.cids[j.ID]; ok || pre.batchCID[j.ID] != nil {
			o.err = fmt.Errorf("%w: %s", task.ErrConflict, j.ID)
			return
		}
	}
	if j.MaxQueued > 0 && t.live(j.Target, pre) >= int64(j.MaxQueued) {
		o.err = fmt.Errorf("%w: target %s has %d unfinished tasks", task.ErrQueueFull, j.Target, j.MaxQueued)
		return
	}
	o.insert = true
	o.receipt = queue.Receipt{ID: o.id()}
	if j.IdempotencyKey != "" {
		pre.batchIdem[ik] = o
	}
	if j.ID != "" {
		pre.batchCID[j.ID] = o
	}
	t.count(j.Target, task.Enqueued, 1)
	t.wake = true
}

// holds reports whether r is held by the attempt of l: the fence of
// Finish and Report.
func holds(r *row, attempt int, owner [16]byte) bool {
	return r != nil && leased(r.status) && r.attempts == attempt && r.leaseOwner == owner
}

func (t *txn) finish(o *finishOp) {
	l, out := o.lease, o.out
	r := t.rows[o.key]
	if !holds(r, l.Attempt, o.owner) {
		o.err = fmt.Errorf("postgres: finish %s attempt %d: %w", l.ID, l.Attempt, task.ErrLeaseLost)
		return
	}
	to, detail, uncount := out.Resolve(r.status)
	if uncount {
		r.attempts--
	}
	if out.Throttled {
		r.throttled++
	}
	if out.Error != "" || to == task.Succeeded {
		r.lastError = clean(out.Error)
	}
	if out.Response != nil {
		r.response = cleanResponse(out.Response)
	}
	applyReport(r, out.Report)
	readyAt := out.ReadyAt.UTC().Truncate(time.Microsecond)
	if readyAt.Before(t.now) {
		readyAt = t.now
	}
	t.move(r, to, readyAt, clean(detail))
	o.final = to
}

func applyReport(r *row, rep *queue.Report) {
	if rep == nil {
		return
	}
	if p := rep.Progress; p != nil {
		r.progress = &task.Progress{Percent: p.Percent, Message: clean(p.Message), UpdatedAt: p.UpdatedAt}
		r.dirty = true
	}
	for _, l := range rep.Logs {
		l.Level, l.Message = clean(l.Level), clean(l.Message)
		r.addLogs = append(r.addLogs, l)
		r.dirty = true
	}
}

func (t *txn) report(o *reportOp) {
	r := t.rows[o.key]
	if !holds(r, o.lease.Attempt, o.owner) {
		o.err = fmt.Errorf("postgres: report %s attempt %d: %w", o.lease.ID, o.lease.Attempt, task.ErrLeaseLost)
		return
	}
	applyReport(r, o.report)
}

func (t *txn) finishDelivery(o *deliveryOp, pre *preread) {
	if !pre.outbox[o.id] {
		return // already finished
	}
	delete(pre.outbox, o.id)
	tries := o.d.Tries + 1
	o.res.Error = clean(o.res.Error)
	status := task.DeliveryDelivered
	switch {
	case o.res.Error != "" && !o.res.RetryAt.IsZero():
		status = task.DeliveryPending
		t.outboxRetry = append(t.outboxRetry, outboxRetry{id: o.id, due: o.res.RetryAt, tries: tries, err: o.res.Error})
		t.delivery = true
	case o.res.Error != "":
		status = task.DeliveryFailed
		t.outboxDone = append(t.outboxDone, o.id)
	default:
		t.outboxDone = append(t.outboxDone, o.id)
	}
	r := t.rows[o.key]
	if r == nil {
		return // a task gone (purged) takes its deliveries' history with it
	}
	for i := len(r.deliveries) - 1; i >= 0; i-- {
		dv := &r.deliveries[i]
		if dv.Destination == o.d.Destination && dv.Status == task.DeliveryPending {
			dv.Status, dv.Tries, dv.LastError, dv.UpdatedAt = status, tries, o.res.Error, t.now
			r.dirty = true
			break
		}
	}
	r.deliveries = queue.TrimDeliveries(r.deliveries)
}
