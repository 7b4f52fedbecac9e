package postgres

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// heartbeatLoop extends, every HeartbeatInterval, the leases of the
// attempts this replica runs and its claims on deliveries. A lease found
// lost (expired and reaped, perhaps run elsewhere since) has its attempt
// cancelled with a StopRequested notice: its Finish would be refused
// anyway. A task found Stopping gets the notice again, in case the
// LISTEN/NOTIFY one was missed.
func (q *Queue) heartbeatLoop() {
	defer q.wg.Done()
	tick := time.NewTicker(q.opts.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-q.stop:
			return
		case <-tick.C:
		}
		if q.paused.Load() {
			continue
		}
		// A slow heartbeat may take up to half the lease's life; ticks
		// missed meanwhile are dropped.
		ctx, cancel := context.WithTimeout(q.life, q.opts.LeaseTimeout/2)
		if err := q.heartbeat(ctx); err != nil && q.life.Err() == nil {
			q.log.Warn("offload postgres: heartbeat failed", "err", err)
		}
		cancel()
	}
}

func (q *Queue) heartbeat(ctx context.Context) error {
	q.mu.Lock()
	held := maps.Clone(q.held)
	q.mu.Unlock()
	keys := make([][16]byte, 0, len(held))
	for h := range held {
		keys = append(keys, h.key) // a key twice (two attempts) matches once in ANY
	}
	ttl := q.opts.LeaseTimeout.Microseconds()
	if _, err := q.pool.Exec(ctx, q.sql.extendClaims, q.owner, ttl); err != nil {
		return err
	}
	if _, err := q.pool.Exec(ctx, q.sql.extendReplica, q.owner, ttl); err != nil {
		return err
	}
	if len(keys) == 0 {
		return nil
	}
	rows, err := q.pool.Query(ctx, q.sql.heartbeat, keys, q.owner, ttl)
	if err != nil {
		return err
	}
	type beat struct {
		attempt int32
		status  int16
	}
	alive := map[[16]byte]beat{}
	for rows.Next() {
		var k [16]byte
		var b beat
		if err := rows.Scan(&k, &b.attempt, &b.status); err != nil {
			rows.Close()
			return err
		}
		alive[k] = b
	}
	if err := rows.Err(); err != nil {
		return err
	}
	var notices []queue.Notice
	q.mu.Lock()
	for h, id := range held {
		b, ok := alive[h.key]
		stop := queue.Notice{Kind: queue.StopRequested, ID: id, Attempt: h.attempt}
		switch _, running := q.held[h]; {
		case ok && int(b.attempt) == h.attempt:
			if b.status == statusCode(task.Stopping) {
				notices = append(notices, stop)
			}
		case running: // not finished meanwhile: the lease is lost
			delete(q.held, h)
			q.log.Warn("offload postgres: lease lost; cancelling the attempt", "id", id, "attempt", h.attempt)
			notices = append(notices, stop)
		}
	}
	q.mu.Unlock()
	q.deliver(notices)
	return nil
}

// reapLoop makes the tasks of expired leases ready again. It sleeps until
// the earliest lease expiry it knows of (at most LeaseTimeout), or until a
// reconnected listener asks it to look.
func (q *Queue) reapLoop() {
	defer q.wg.Done()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-q.stop:
			return
		case <-timer.C:
		case <-q.reapNow:
		}
		wait := q.opts.LeaseTimeout
		if err := q.reapExpired(); err != nil {
			if q.life.Err() != nil {
				return
			}
			q.log.Error("offload postgres: reaping expired leases failed", "err", err)
		} else if d, ok := q.nextExpiry(); ok {
			// A little after the expiry, so that it has passed by the
			// database's clock too, and jittered across replicas.
			wait = min(max(d+10*time.Millisecond+time.Duration(rand.Int64N(int64(20*time.Millisecond))), 50*time.Millisecond), wait)
		}
		timer.Stop()
		timer.Reset(wait)
	}
}

func (q *Queue) reapExpired() error {
	for {
		ctx, cancel := context.WithTimeout(q.life, q.opts.Timeout)
		n, err := q.reclaim(ctx, q.sql.reap, []any{reapBatch, q.known.Load()}, "lease expired")
		cancel()
		if err != nil || n < reapBatch {
			return err
		}
	}
}

func (q *Queue) nextExpiry() (time.Duration, bool) {
	ctx, cancel := context.WithTimeout(q.life, 10*time.Second)
	defer cancel()
	var secs pgtype.Float8
	if err := q.pool.QueryRow(ctx, q.sql.nextExpiry, q.known.Load()).Scan(&secs); err != nil || !secs.Valid {
		return 0, false
	}
	return time.Duration(secs.Float64 * float64(time.Second)), true
}

// abandon hands back the leases this replica still holds, at Close.
func (q *Queue) abandon(ctx context.Context) (int, error) {
	n, err := q.reclaim(ctx, q.sql.abandon, []any{q.owner}, "replica closed")
	q.mu.Lock()
	clear(q.held)
	q.mu.Unlock()
	return n, err
}

// reclaim ends the attempts that the statement sel selects (rowCols, rows
// locked): as after a lost process, a Running task is ready again at once
// with the attempt counted, and a Stopping one is Stopped.
func (q *Queue) reclaim(ctx context.Context, sel string, args []any, why string) (int, error) {
	t := q.newTxn(shardOther)
	s, err := q.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer s.close()
	b := &pgx.Batch{}
	b.Queue(sel, args...).Query(func(rows pgx.Rows) error {
		return collectRows(rows, nil, func(r *row) { t.rows[r.key] = r })
	})
	if err := s.send(b); err != nil {
		return 0, err
	}
	if len(t.rows) == 0 {
		return 0, nil
	}
	for _, r := range t.rows {
		detail := fmt.Sprintf("process lost during attempt %d (%s)", r.attempts, why)
		to := task.Retrying
		if r.status == task.Stopping {
			to = task.Stopped
		}
		r.lastError = detail
		t.move(r, to, t.now, detail)
	}
	b = &pgx.Batch{}
	if err := t.write(b); err != nil {
		return 0, err
	}
	if err := s.commit(b); err != nil {
		return 0, err
	}
	q.deliver(t.finalNotices())
	return len(t.rows), nil
}

func (q *Queue) purgeLoop() {
	defer q.wg.Done()
	tick := time.NewTicker(q.opts.PurgeInterval)
	defer tick.Stop()
	for {
		select {
		case <-q.stop:
			return
		case <-tick.C:
		}
		if _, err := q.Purge(q.life); err != nil && q.life.Err() == nil {
			q.log.Error("offload postgres: purge failed", "err", err)
		}
	}
}

// Purge deletes tasks that finished longer than Options.Retention ago
// (once their deliveries are over), with their bodies, bodies of uploads
// abandoned longer than Options.BlobGrace ago, and records of replicas
// gone for an hour, in small
// transactions, and returns how many tasks it deleted. Unfinished tasks
// are never purged. Every replica runs it each Options.PurgeInterval; they
// skip one another's rows.
func (q *Queue) Purge(ctx context.Context) (int, error) {
	total := 0
	for {
		bctx, cancel := q.bind(ctx)
		n, err := q.purgeSome(bctx)
		cancel()
		total += n
		if err != nil {
			return total, fmt.Errorf("postgres: purge: %w", err)
		}
		if n < purgeBatch {
			break
		}
	}
	ctx, cancel := q.bind(ctx)
	defer cancel()
	if _, err := q.pool.Exec(ctx, q.sql.sweepBlobs, q.opts.BlobGrace.Microseconds()); err != nil {
		return total, fmt.Errorf("postgres: purge: sweep blobs: %w", err)
	}
	if _, err := q.pool.Exec(ctx, q.sql.sweepReplicas); err != nil {
		return total, fmt.Errorf("postgres: purge: sweep replicas: %w", err)
	}
	return total, nil
}

func (q *Queue) purgeSome(ctx context.Context) (int, error) {
	t := q.newTxn(shardOther)
	s, err := q.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer s.close()
	n := 0
	var blobs []string
	b := &pgx.Batch{}
	b.Queue(q.sql.purge, t.now.Add(-q.opts.Retention), purgeBatch).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var target string
			var code int16
			var blob *string
			if err := rows.Scan(&target, &code, &blob); err != nil {
				return err
			}
			st, err := statusOf(code)
			if err != nil {
				return err
			}
			t.count(target, st, -1)
			if blob != nil {
				blobs = append(blobs, *blob)
			}
			n++
		}
		return rows.Err()
	})
	if err := s.send(b); err != nil {
		return 0, err
	}
	b = &pgx.Batch{}
	if len(blobs) > 0 {
		b.Queue(q.sql.deleteBlobs, blobs)
	}
	if err := t.write(b); err != nil {
		return 0, err
	}
	if err := s.commit(b); err != nil {
		return 0, err
	}
	return n, nil
}
