package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// Lease implements queue.Backend. It claims the oldest ready tasks of each
// requested target with SELECT ... FOR UPDATE SKIP LOCKED, so that
// replicas leasing at once take different tasks without waiting for one
// another, and gives each a lease owned by this replica that its heartbeat
// extends until Finish.
func (q *Queue) Lease(ctx context.Context, now time.Time, reqs []queue.LeaseRequest) (*queue.LeaseResult, error) {
	if q.isClosed() {
		return nil, task.ErrClosed
	}
	ctx, cancel := q.bind(ctx)
	defer cancel()
	now = now.UTC()
	byTarget := map[string]queue.LeaseRequest{}
	var targets []string
	var maxes []int32
	for _, r := range reqs {
		if _, dup := byTarget[r.Target]; dup {
			continue
		}
		byTarget[r.Target] = r
		targets = append(targets, r.Target)
		maxes = append(maxes, int32(max(r.Max, 0)))
	}
	res := &queue.LeaseResult{}
	if len(targets) == 0 {
		return res, nil
	}
	t := q.newTxn(shardLease)
	s, err := q.begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: lease: %w", err)
	}
	defer s.close()

	var found []*row
	b := &pgx.Batch{}
	b.Queue(q.sql.lease, targets, maxes, now).Query(func(rows pgx.Rows) error {
		var request, body []byte
		return collectRows(rows, func() []any { return []any{&request, &body} }, func(r *row) {
			if t.rows[r.key] == nil {
				r.request, r.body = request, body
				t.rows[r.key] = r
				found = append(found, r)
			}
		})
	})
	if err := s.send(b); err != nil {
		return nil, fmt.Errorf("postgres: lease: %w", err)
	}

	leasedPer := map[string]int{}
	var claimed []*row
	for _, r := range found {
		req := byTarget[r.target]
		if req.MaxAge > 0 && now.Sub(r.enqueuedAt) > req.MaxAge {
			r.lastError = fmt.Sprintf("not run within MaxAge %s", req.MaxAge)
			t.move(r, task.Expired, time.Time{}, r.lastError)
			res.Expired = append(res.Expired, r.brief())
			continue
		}
		r.attempts++
		r.startedAt = now.Truncate(time.Microsecond)
		t.move(r, task.Running, time.Time{}, "")
		claimed = append(claimed, r)
		leasedPer[r.target]++
	}

	b = &pgx.Batch{}
	if err := t.write(b); err != nil {
		return nil, err
	}
	b.Queue(q.sql.next, targets).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var target string
			var at pgtype.Timestamptz
			if err := rows.Scan(&target, &at); err != nil {
				return err
			}
			first := ts(at)
			// A ready task left while the request had room (expired tasks,
			// or ones another replica was leasing, took the places): its
			// time, not after now, says lease again at once.
			if first.After(now) || leasedPer[target] < byTarget[target].Max {
				if res.Next.IsZero() || first.Before(res.Next) {
					res.Next = first
				}
			}
		}
		return rows.Err()
	})
	if err := s.commit(b); err != nil {
		return nil, fmt.Errorf("postgres: lease: %w", err)
	}

	q.mu.Lock()
	for _, r := range claimed {
		q.held[heldAttempt{r.key, r.attempts}] = r.id()
	}
	q.mu.Unlock()
	for _, r := range claimed {
		l := &queue.Lease{
			ID: r.id(), Target: r.target, Attempt: r.attempts, RetryBase: r.retryBase, Throttled: r.throttled,
			CreatedAt: r.createdAt, EnqueuedAt: r.enqueuedAt, Key: q.leaseKey(r.key),
		}
		l.Request, l.Corrupt = reqcodec.Decode(r.request)
		if l.Request != nil && l.Request.Blob == "" {
			l.Request.Body = r.body
		}
		res.Leases = append(res.Leases, l)
	}
	q.deliver(t.finalNotices())
	return res, nil
}

// release forgets the lease of an attempt that has ended.
func (q *Queue) release(key [16]byte, attempt int) {
	q.mu.Lock()
	delete(q.held, heldAttempt{key, attempt})
	q.mu.Unlock()
}

func (q *Queue) isClosed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}
