package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/oklog/ulid/v2"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// StopTask implements task.Store. A task waiting to run is Stopped at
// once; a running one becomes Stopping, and the replica that runs it,
// whichever it is, hears of it through LISTEN/NOTIFY (and, should that
// notice be lost, from its next heartbeat) and cancels the attempt.
func (q *Queue) StopTask(ctx context.Context, id string) (*task.Task, error) {
	err := q.control(ctx, id, func(t *txn, r *row) error {
		switch {
		case r.status.Terminal():
			return fmt.Errorf("postgres: stop %s: %w (%s)", id, task.ErrFinished, r.status)
		case r.status == task.Stopping:
		case r.status == task.Running:
			t.stopRequested(r.id())
			t.move(r, task.Stopping, time.Time{}, "stop requested")
		default:
			t.move(r, task.Stopped, time.Time{}, "stopped on request")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return q.GetTask(ctx, id)
}

// RetryTask implements task.Store. While schedulers run (live replicas
// have registered their targets), a task of a target none of them has is
// refused: it would wait forever.
func (q *Queue) RetryTask(ctx context.Context, id, reason string) (*task.Task, error) {
	if err := q.refuseUnregistered(ctx, id); err != nil {
		return nil, err
	}
	err := q.control(ctx, id, func(t *txn, r *row) error {
		if !r.status.Retryable() {
			return fmt.Errorf("postgres: retry %s: %w (%s)", id, task.ErrNotRetryable, r.status)
		}
		r.retryBase = r.attempts
		r.throttled = 0 // counted since RetryBase
		r.enqueuedAt = t.now
		r.lastError = ""
		t.move(r, task.Enqueued, t.now, clean(reason))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return q.GetTask(ctx, id)
}

// refuseUnregistered returns an error wrapping task.ErrTargetNotRegistered
// if the retryable task named id has a target that no live replica runs
// while some do. A registration that changes meanwhile only moves the
// answer to the next Invalidate.
func (q *Queue) refuseUnregistered(ctx context.Context, id string) error {
	tk, err := q.GetTask(ctx, id)
	if err != nil || !tk.Status.Retryable() {
		return err // the retry itself says why not
	}
	ctx, cancel := q.bind(ctx)
	defer cancel()
	var live, runs bool
	if err := q.pool.QueryRow(ctx, q.sql.registered, tk.Target).Scan(&live, &runs); err != nil {
		return fmt.Errorf("postgres: retry %s: %w", id, err)
	}
	if live && !runs {
		return fmt.Errorf("postgres: retry %s: %w: %w: no running scheduler has target %q", id, task.ErrNotRetryable, task.ErrTargetNotRegistered, tk.Target)
	}
	return nil
}

// control changes the one task named id in its own transaction: do
// decides, before anything is written, and changes the row.
func (q *Queue) control(ctx context.Context, id string, do func(t *txn, r *row) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if q.isClosed() {
		return task.ErrClosed
	}
	ctx, cancel := q.bind(ctx)
	defer cancel()
	sql, arg, ok := q.lookup(id, q.sql.lockByKey, q.sql.lockByID)
	if !ok {
		return fmt.Errorf("postgres: %s: %w", id, task.ErrNotFound)
	}
	t := q.newTxn(shardOther)
	s, err := q.begin(ctx)
	if err != nil {
		return err
	}
	defer s.close()
	var r *row
	b := &pgx.Batch{}
	b.Queue(sql, arg).Query(func(rows pgx.Rows) error {
		return collectRows(rows, nil, func(x *row) { r = x })
	})
	if err := s.send(b); err != nil {
		return err
	}
	if r == nil {
		return fmt.Errorf("postgres: %s: %w", id, task.ErrNotFound)
	}
	t.rows[r.key] = r
	if err := do(t, r); err != nil {
		return err
	}
	b = &pgx.Batch{}
	if err := t.write(b); err != nil {
		return err
	}
	if err := s.commit(b); err != nil {
		return err
	}
	q.deliver(t.finalNotices())
	return nil
}

// lookup returns the statement and argument that find the task named id:
// by key for an ID of the generated form, by caller ID otherwise.
func (q *Queue) lookup(id, byKey, byID string) (string, any, bool) {
	if task.IsGenerated(id) {
		u, err := ulid.ParseStrict(id)
		if err != nil {
			return "", nil, false
		}
		return byKey, [16]byte(u), true
	}
	if task.CheckCallerID(id) != nil {
		return "", nil, false
	}
	return byID, id, true
}

// invalidateBatch bounds the tasks one Invalidate transaction changes.
const invalidateBatch = 1000

// Invalidate implements queue.Backend. The targets with waiting tasks are
// read from the counters, so only the unknown targets' tasks are visited.
//
// With several replicas, a target counts as known when any live replica
// runs it: each Invalidate records the caller's targets in the replicas
// table, kept alive by the heartbeat, so that during a rolling deploy an
// old replica does not invalidate the tasks of a target that new ones
// added. Only a target that no live replica has registered is given up.
func (q *Queue) Invalidate(ctx context.Context, known []string) (int, error) {
	if q.isClosed() {
		return 0, task.ErrClosed
	}
	ctx, cancel := q.bind(ctx)
	defer cancel()
	// Record what this replica runs (its heartbeat keeps the record
	// alive), then look for targets that no live replica runs.
	if known == nil {
		known = []string{}
	}
	if _, err := q.pool.Exec(ctx, q.sql.registerTargets, q.owner, known, q.opts.LeaseTimeout.Microseconds()); err != nil {
		return 0, fmt.Errorf("postgres: invalidate: %w", err)
	}
	if q.known.Swap(&known) == nil {
		select {
		case q.reapNow <- struct{}{}: // Stopping tasks left by a dead replica
		default:
		}
	}
	rows, err := q.pool.Query(ctx, q.sql.waitingTargets)
	if err != nil {
		return 0, fmt.Errorf("postgres: invalidate: %w", err)
	}
	unknown, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("postgres: invalidate: %w", err)
	}
	if len(unknown) == 0 {
		return 0, nil
	}
	total := 0
	for {
		n, notices, err := q.invalidateSome(ctx, unknown)
		total += n
		if err != nil {
			return total, fmt.Errorf("postgres: invalidate: %w", err)
		}
		q.deliver(notices)
		if n == 0 {
			return total, nil
		}
	}
}

func (q *Queue) invalidateSome(ctx context.Context, targets []string) (int, []queue.Notice, error) {
	t := q.newTxn(shardOther)
	s, err := q.begin(ctx)
	if err != nil {
		return 0, nil, err
	}
	defer s.close()
	b := &pgx.Batch{}
	b.Queue(q.sql.invalidate, targets, invalidateBatch).Query(func(rows pgx.Rows) error {
		return collectRows(rows, nil, func(r *row) { t.rows[r.key] = r })
	})
	if err := s.send(b); err != nil {
		return 0, nil, err
	}
	for _, r := range t.rows {
		r.lastError = fmt.Sprintf("target %q is not registered", r.target)
		t.move(r, task.Invalid, time.Time{}, r.lastError)
	}
	b = &pgx.Batch{}
	if err := t.write(b); err != nil {
		return 0, nil, err
	}
	if err := s.commit(b); err != nil {
		return 0, nil, err
	}
	return len(t.rows), t.finalNotices(), nil
}
