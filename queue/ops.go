package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/task"
)

// Enqueue implements Backend. The request is encoded on the caller's
// goroutine; only the writes happen on the committer's.
func (q *Queue) Enqueue(ctx context.Context, job *Job) (Receipt, error) {
	if err := CheckJob(job); err != nil {
		return Receipt{}, fmt.Errorf("queue: enqueue: %w", err)
	}
	now := q.opts.Now()
	// One allocation holds the op, its key and its meta.
	o := &enqueueOp{job: job, keyArr: task.NewULID(now)}
	o.key, o.meta = o.keyArr[:], &o.metaVal
	m := o.meta
	*m = jobMeta{callerID: job.ID, target: job.Target, created: now, readyAt: job.ReadyAt, idemKey: job.IdempotencyKey}
	if m.readyAt.Before(now) {
		m.readyAt = now
	}
	if sl := q.opts.Sealer; sl != nil {
		var err error
		if o.record, err = sealRecord(sl, o.key, m, job.Request); err != nil {
			return Receipt{}, fmt.Errorf("queue: enqueue: %w", err)
		}
	} else {
		o.record = appendRecord(make([]byte, 0, recordSize(m, job.Request)), m, job.Request)
	}
	if err := q.submit(ctx, o); err != nil {
		return Receipt{}, err
	}
	return o.receipt, o.err
}

type enqueueOp struct {
	key     []byte
	meta    *jobMeta
	job     *Job
	record  []byte
	receipt Receipt
	err     error

	keyArr  ulid.ULID // backs key when Enqueue made the op
	metaVal jobMeta   // backs meta when Enqueue made the op
}

func (o *enqueueOp) apply(w *writer) error {
	m, job := o.meta, o.job
	// The idempotency key first: a retried request that also names its
	// task is answered with the first acceptance, not a conflict.
	if m.idemKey != "" {
		if v := w.idem.Get(idemKey(m.target, m.idemKey)); len(v) == 48 {
			if !bytes.Equal(v[:32], job.Fingerprint[:]) {
				o.err = task.ErrIdempotencyMismatch
				return nil
			}
			em, _, err := decodeMeta(w.tasks.Get(v[32:]))
			if err != nil {
				o.err = fmt.Errorf("queue: enqueue: the task holding its idempotency key: %w", err)
				return nil
			}
			o.receipt = Receipt{ID: taskID(v[32:], em), Replayed: true}
			return nil
		}
	}
	if m.callerID != "" && w.ids.Get([]byte(m.callerID)) != nil {
		o.err = fmt.Errorf("%w: %s", task.ErrConflict, m.callerID)
		return nil
	}
	if job.MaxQueued > 0 && w.liveCount(m.target) >= int64(job.MaxQueued) {
		o.err = fmt.Errorf("%w: target %s has %d unfinished tasks", task.ErrQueueFull, m.target, job.MaxQueued)
		return nil
	}
	if err := w.tasks.Put(o.key, o.record); err != nil {
		return err
	}
	if m.callerID != "" {
		if err := w.ids.Put([]byte(m.callerID), o.key); err != nil {
			return err
		}
	}
	if m.idemKey != "" {
		if err := w.idem.Put(idemKey(m.target, m.idemKey), append(job.Fingerprint[:], o.key...)); err != nil {
			return err
		}
	}
	if blob := job.Request.Blob; blob != "" {
		if err := w.blobs.Put([]byte(blob), o.key); err != nil {
			return err
		}
	}
	if err := w.insert(o.key, m.target, m.readyAt); err != nil {
		return err
	}
	o.receipt = Receipt{ID: taskID(o.key, m)}
	return nil
}

// Lease implements Backend.
func (q *Queue) Lease(ctx context.Context, now time.Time, reqs []LeaseRequest) (*LeaseResult, error) {
	o := &leaseOp{now: now, reqs: reqs}
	if err := q.submit(ctx, o); err != nil {
		return nil, err
	}
	res := &LeaseResult{Next: o.next, Expired: o.expired}
	for _, c := range o.claimed {
		l := &Lease{
			ID: c.id, Target: c.meta.target, Attempt: c.attempt, RetryBase: c.retryBase, Throttled: c.throttled,
			CreatedAt: c.meta.created, EnqueuedAt: c.enqueuedAt, Key: c.key,
		}
		if c.sealed {
			l.Request, l.Corrupt = openClaimed(q.opts.Sealer, c.key, c.id, c.request)
		} else {
			l.Request, l.Corrupt = reqcodec.Decode(c.request)
		}
		res.Leases = append(res.Leases, l)
	}
	return res, nil
}

type claim struct {
	key, request []byte
	id           string
	meta         *jobMeta
	attempt      int
	retryBase    int
	throttled    int
	enqueuedAt   time.Time
	sealed       bool // request holds the whole record, opened outside the transaction
}

type leaseOp struct {
	now     time.Time
	reqs    []LeaseRequest
	claimed []claim
	expired []*task.Task
	next    time.Time
}

func (o *leaseOp) apply(w *writer) error {
	nowNs := uint64(o.now.UnixNano())
	for _, r := range o.reqs {
		rb := w.ready.Bucket([]byte(r.Target))
		if rb == nil {
			continue
		}
		var keys [][]byte // ready keys: time, then task key
		c := rb.Cursor()
		for k, _ := c.First(); k != nil && len(keys) < r.Max; k, _ = c.Next() {
			if binary.BigEndian.Uint64(k) > nowNs {
				break
			}
			keys = append(keys, append([]byte(nil), k...))
		}
		leased := len(o.claimed)
		for _, rk := range keys {
			if err := o.claim(w, rb, rk, r); err != nil {
				return err
			}
		}
		if k, _ := rb.Cursor().First(); k != nil {
			// A ready task is left while the request has room (expired
			// tasks took the places): its time, not after now, says
			// lease again at once.
			if t := binary.BigEndian.Uint64(k); t > nowNs || len(o.claimed)-leased < r.Max {
				if next := time.Unix(0, int64(t)).UTC(); o.next.IsZero() || next.Before(o.next) {
					o.next = next
				}
			}
		}
	}
	return nil
}

// claim leases the task whose ready entry is rk in rb. A task whose
// records cannot be decoded loses its ready entry instead, so that it
// neither fails the commit it is in nor comes up again.
func (o *leaseOp) claim(w *writer, rb *bolt.Bucket, rk []byte, r LeaseRequest) error {
	key := rk[8:]
	rec := w.get(w.tasks, key)
	m, reqBytes, err := decodeMeta(rec)
	var s *state
	if err == nil {
		s, err = w.loadState(key, m)
	}
	if err != nil {
		w.damaged(key, "left out of leasing", err)
		return w.del(rb, rk)
	}
	if r.MaxAge > 0 && o.now.Sub(s.EnqueuedAt) > r.MaxAge {
		s.LastError = fmt.Sprintf("not run within MaxAge %s", r.MaxAge)
		if err := w.move(key, m, s, task.Expired, time.Time{}, s.LastError); err != nil {
			return err
		}
		t := buildTask(key, m, s, nil, false)
		fillResponse(t, w.q.opts.Sealer, key, s)
		o.expired = append(o.expired, t)
		return nil
	}
	s.Attempts++
	s.StartedAt = o.now
	if err := w.move(key, m, s, task.Running, time.Time{}, ""); err != nil {
		return err
	}
	if m.sealed {
		reqBytes = rec // its head is the sealed request's additional data
	}
	o.claimed = append(o.claimed, claim{
		key: key, request: append([]byte(nil), reqBytes...), id: taskID(key, m), meta: m,
		attempt: s.Attempts, retryBase: s.RetryBase, throttled: s.Throttled, enqueuedAt: s.EnqueuedAt,
		sealed: m.sealed,
	})
	return nil
}

// Finish implements Backend.
func (q *Queue) Finish(ctx context.Context, l *Lease, out Outcome) (task.Status, error) {
	switch out.Status {
	case task.Succeeded, task.Failed, task.Retrying, task.Expired, task.Invalid, task.Enqueued:
	default:
		return "", fmt.Errorf("queue: finish %s: %w: outcome %s", l.ID, task.ErrInvalidTransition, out.Status)
	}
	o := &finishOp{lease: l, out: out}
	if sl := q.opts.Sealer; sl != nil && out.Response != nil {
		var err error
		if o.sealedResponse, err = sealResponse(sl, l.Key, out.Response); err != nil {
			return "", fmt.Errorf("queue: finish %s: %w", l.ID, err)
		}
	}
	if err := q.submit(ctx, o); err != nil {
		return "", err
	}
	return o.final, o.err
}

type finishOp struct {
	lease *Lease
	out   Outcome
	final task.Status
	err   error

	sealedResponse []byte // out.Response sealed, when the queue has a Sealer
}

func (o *finishOp) apply(w *writer) error {
	l, out := o.lease, o.out
	// A leased task has a state record, and its lease names its target:
	// the job record need not be read. No state record means no lease.
	v := w.get(w.states, l.Key)
	var s *state
	if v != nil {
		var err error
		if s, err = decodeState(v); err != nil {
			o.err = fmt.Errorf("queue: finish %s: state: %w", l.ID, err)
			return nil
		}
	}
	m := &jobMeta{target: l.Target}
	if s == nil || (s.Status != task.Running && s.Status != task.Stopping) || s.Attempts != l.Attempt {
		o.err = fmt.Errorf("queue: finish %s attempt %d: %w", l.ID, l.Attempt, task.ErrLeaseLost)
		return nil
	}
	to, detail, uncount := out.Resolve(s.Status)
	if uncount {
		s.Attempts--
	}
	if out.Throttled {
		s.Throttled++
	}
	if out.Error != "" || to == task.Succeeded {
		s.LastError = out.Error
	}
	if out.Response != nil {
		s.Response, s.SealedResponse = out.Response, nil
		if o.sealedResponse != nil {
			s.Response, s.SealedResponse = nil, o.sealedResponse
		}
	}
	out.Report.apply(s)
	readyAt := out.ReadyAt
	if readyAt.Before(w.now) {
		readyAt = w.now
	}
	if err := w.move(l.Key, m, s, to, readyAt, detail); err != nil {
		return err
	}
	o.final = to
	return nil
}

// StopTask implements task.Store.
func (q *Queue) StopTask(ctx context.Context, id string) (*task.Task, error) {
	return q.control(ctx, &controlOp{
		id: id,
		check: func(_ *jobMeta, s *state) error {
			if s.Status.Terminal() {
				return fmt.Errorf("queue: stop %s: %w (%s)", id, task.ErrFinished, s.Status)
			}
			return nil
		},
		do: func(w *writer, key []byte, m *jobMeta, s *state) error {
			switch s.Status {
			case task.Stopping:
				return nil
			case task.Running:
				// The ID as stored: id may be spelt otherwise (lower case), and
				// the scheduler finds the running attempt by the stored one.
				w.notices = append(w.notices, Notice{Kind: StopRequested, ID: taskID(key, m)})
				return w.move(key, m, s, task.Stopping, time.Time{}, "stop requested")
			default:
				return w.move(key, m, s, task.Stopped, time.Time{}, "stopped on request")
			}
		},
	})
}

// RetryTask implements task.Store.
func (q *Queue) RetryTask(ctx context.Context, id, reason string) (*task.Task, error) {
	return q.control(ctx, &controlOp{
		id: id,
		check: func(m *jobMeta, s *state) error {
			if !s.Status.Retryable() {
				return fmt.Errorf("queue: retry %s: %w (%s)", id, task.ErrNotRetryable, s.Status)
			}
			q.mu.Lock()
			known := q.known
			q.mu.Unlock()
			if known != nil && !known[m.target] {
				return fmt.Errorf("queue: retry %s: %w: %w: the scheduler has no target %q", id, task.ErrNotRetryable, task.ErrTargetNotRegistered, m.target)
			}
			return nil
		},
		do: func(w *writer, key []byte, m *jobMeta, s *state) error {
			s.RetryBase = s.Attempts
			s.Throttled = 0 // counted since RetryBase
			s.EnqueuedAt = w.now
			s.LastError = ""
			return w.move(key, m, s, task.Enqueued, w.now, reason)
		},
	})
}

// controlOp changes one task found by ID: check decides, before anything
// is written, whether the change is allowed; do writes it.
type controlOp struct {
	id    string
	check func(m *jobMeta, s *state) error
	do    func(w *writer, key []byte, m *jobMeta, s *state) error
	err   error
}

func (o *controlOp) apply(w *writer) error {
	key := resolve(w.tx, o.id)
	if key == nil {
		o.err = fmt.Errorf("queue: %s: %w", o.id, task.ErrNotFound)
		return nil
	}
	m, s, err := w.load(key)
	if err != nil {
		o.err = fmt.Errorf("queue: %s: %w", o.id, err)
		return nil
	}
	if o.err = o.check(m, s); o.err != nil {
		return nil
	}
	return o.do(w, key, m, s)
}

func (q *Queue) control(ctx context.Context, o *controlOp) (*task.Task, error) {
	if err := q.submit(ctx, o); err != nil {
		return nil, err
	}
	if o.err != nil {
		return nil, o.err
	}
	// Fill the request summary outside the committer.
	return q.GetTask(ctx, o.id)
}

// Invalidate implements Backend. It also ends Stopped the tasks that a
// process which died left Stopping (found at Open): a scheduler calls it
// when it starts, once its targets and their destinations are registered,
// so their onFailure deliveries are written as any stop's would be.
func (q *Queue) Invalidate(ctx context.Context, known []string) (int, error) {
	q.mu.Lock()
	o := &invalidateOp{known: known, stops: q.leftoverStops}
	q.leftoverStops = nil
	q.known = make(map[string]bool, len(known))
	for _, t := range known {
		q.known[t] = true
	}
	q.mu.Unlock()
	if err := q.submit(ctx, o); err != nil {
		q.mu.Lock()
		q.leftoverStops = append(q.leftoverStops, o.stops...)
		q.mu.Unlock()
		return 0, err
	}
	return o.n, nil
}

type invalidateOp struct {
	known []string
	stops [][]byte // of tasks found Stopping at Open
	n     int
}

func (o *invalidateOp) apply(w *writer) error {
	for _, key := range o.stops {
		m, s, err := w.load(key)
		if err != nil {
			w.damaged(key, "not stopped", err)
			continue
		}
		if m != nil && s.Status == task.Stopping {
			if err := w.lost(key, m, s, task.Stopped); err != nil {
				return err
			}
		}
	}
	isKnown := make(map[string]bool, len(o.known))
	for _, k := range o.known {
		isKnown[k] = true
	}
	var targets []string
	err := w.ready.ForEachBucket(func(name []byte) error {
		if !isKnown[string(name)] {
			targets = append(targets, string(name))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, target := range targets {
		var keys [][]byte
		c := w.ready.Bucket([]byte(target)).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			keys = append(keys, append([]byte(nil), k[8:]...))
		}
		for _, key := range keys {
			m, s, err := w.load(key)
			if err != nil {
				w.damaged(key, "not marked Invalid", err)
				continue
			}
			if m == nil {
				continue // an index entry without a record; Check reports it
			}
			s.LastError = fmt.Sprintf("target %q is not registered", target)
			if err := w.move(key, m, s, task.Invalid, time.Time{}, s.LastError); err != nil {
				return err
			}
			o.n++
		}
	}
	return nil
}

// recoverOp runs once at Open: attempts that a dead process left Running
// are made ready again (the attempt stays counted). Stopping ones are only
// found: they end Stopped at the next Invalidate, when a scheduler has
// registered its targets, so that their onFailure deliveries are owed
// under its destinations (Open knows none).
type recoverOp struct {
	n     int
	stops [][]byte
}

func (o *recoverOp) apply(w *writer) error {
	type found struct {
		key    []byte
		status task.Status
	}
	var all []found
	err := w.index.ForEachBucket(func(target []byte) error {
		c := w.index.Bucket(target).Cursor()
		for _, st := range []task.Status{task.Running, task.Stopping} {
			p := []byte{statusByte(st)}
			for k, _ := c.Seek(p); k != nil && k[0] == p[0]; k, _ = c.Next() {
				all = append(all, found{append([]byte(nil), k[1:]...), st})
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, f := range all {
		if f.status == task.Stopping {
			o.stops = append(o.stops, f.key)
			continue
		}
		m, s, err := w.load(f.key)
		if err != nil {
			w.damaged(f.key, "not recovered", err)
			continue
		}
		if m == nil {
			continue // an index entry without a record; Check reports it
		}
		if err := w.lost(f.key, m, s, task.Retrying); err != nil {
			return err
		}
		o.n++
	}
	return nil
}

// lost ends the attempt of a task whose process died: to is Retrying for a
// Running task, Stopped for a Stopping one.
func (w *writer) lost(key []byte, m *jobMeta, s *state, to task.Status) error {
	s.LastError = fmt.Sprintf("process lost during attempt %d", s.Attempts)
	return w.move(key, m, s, to, w.now, s.LastError)
}
