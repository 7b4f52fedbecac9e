package postgres

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// PendingDeliveries implements queue.Backend. With several replicas each
// delivery must go out once at a time, so the deliveries returned are
// claimed by this replica (until FinishDelivery, or until its heartbeat
// stops for LeaseTimeout); ones claimed by another live replica are left
// out. The next time returned is also the expiry of such a claim, so that
// a delivery whose replica died is taken over.
func (q *Queue) PendingDeliveries(ctx context.Context, now time.Time, maxN int, skip func(key string) bool) ([]*queue.Delivery, time.Time, error) {
	if err := ctx.Err(); err != nil {
		return nil, time.Time{}, err
	}
	if q.isClosed() {
		return nil, time.Time{}, task.ErrClosed
	}
	ctx, cancel := q.bind(ctx)
	defer cancel()
	now = now.UTC()
	var out []*queue.Delivery
	afterDue, afterID := time.Time{}, int64(0)
	for first := true; len(out) < maxN; first = false {
		type claimed struct {
			d   *queue.Delivery
			due time.Time
			id  int64
		}
		var got []claimed
		rows, err := q.pool.Query(ctx, q.sql.claimDeliveries, now, q.owner, q.opts.LeaseTimeout.Microseconds(),
			pgtype.Timestamptz{Time: afterDue, Valid: true, InfinityModifier: infinityIf(first)}, afterID, maxN)
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("postgres: pending deliveries: %w", err)
		}
		for rows.Next() {
			var (
				id          int64
				key         [16]byte
				kind        string
				tries       int32
				due         time.Time
				finished    pgtype.Timestamptz
				cid, target pgtype.Text
			)
			if err := rows.Scan(&id, &key, &kind, &tries, &due, &finished, &cid, &target); err != nil {
				rows.Close()
				return nil, time.Time{}, fmt.Errorf("postgres: pending deliveries: %w", err)
			}
			d := &queue.Delivery{Destination: task.OnFailure, Tries: int(tries), FinishedAt: ts(finished), Target: target.String, TaskID: cid.String}
			if kind == "s" {
				d.Destination = task.OnSuccess
			}
			if d.TaskID == "" {
				d.TaskID = keyID(key) // also for a purged task: FinishDelivery drops it
			}
			d.Key = binary.BigEndian.AppendUint64(make([]byte, 0, 25), uint64(id))
			d.Key = append(append(d.Key, key[:]...), kind[0])
			got = append(got, claimed{d: d, due: due, id: id})
		}
		if err := rows.Err(); err != nil {
			return nil, time.Time{}, fmt.Errorf("postgres: pending deliveries: %w", err)
		}
		slices.SortFunc(got, func(a, b claimed) int { return cmp.Or(a.due.Compare(b.due), cmp.Compare(a.id, b.id)) })
		for _, c := range got {
			afterDue, afterID = c.due, c.id
			if len(out) < maxN && !skip(string(c.d.Key)) {
				out = append(out, c.d)
			}
		}
		if len(got) < maxN {
			break
		}
	}
	var nextDue pgtype.Timestamptz
	var claimWait pgtype.Float8
	if err := q.pool.QueryRow(ctx, q.sql.nextDelivery, now, q.owner).Scan(&nextDue, &claimWait); err != nil {
		return nil, time.Time{}, fmt.Errorf("postgres: pending deliveries: %w", err)
	}
	next := ts(nextDue)
	if claimWait.Valid {
		at := time.Now().Add(max(time.Duration(claimWait.Float64*float64(time.Second)), 100*time.Millisecond))
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return out, next, nil
}

func infinityIf(b bool) pgtype.InfinityModifier {
	if b {
		return pgtype.NegativeInfinity
	}
	return pgtype.Finite
}
