package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/offload-go/offload/task"
)

// Check compares the counters with the tasks they count and checks each
// task's columns against its status (a ready time while waiting, a lease
// while running, a finish time once terminal). It reads every task: run it
// in tests or by hand, not on a hot path. It returns nil or every problem
// found, joined.
func (q *Queue) Check(ctx context.Context) error {
	if q.isClosed() {
		return task.ErrClosed
	}
	ctx, cancel := q.bind(ctx)
	defer cancel()
	var errs []error
	rows, err := q.pool.Query(ctx, `
		WITH actual AS (SELECT target, status, count(*)::int8 AS n FROM `+q.sql.tasks+` GROUP BY target, status),
		counted AS (SELECT target, status, sum(n)::int8 AS n FROM `+q.schemaName()+`.counts GROUP BY target, status)
		SELECT coalesce(a.target, c.target), coalesce(a.status, c.status), coalesce(a.n, 0), coalesce(c.n, 0)
		FROM actual a FULL JOIN counted c ON a.target = c.target AND a.status = c.status
		WHERE coalesce(a.n, 0) <> coalesce(c.n, 0)`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var target string
		var status int16
		var actual, counted int64
		if err := rows.Scan(&target, &status, &actual, &counted); err != nil {
			return err
		}
		st, _ := statusOf(status)
		errs = append(errs, fmt.Errorf("target %s status %s: %d tasks, counted %d", target, st, actual, counted))
	}
	if err := rows.Err(); err != nil {
		return err
	}
	checks := []struct{ what, cond string }{
		{"waiting without a ready time", "status IN (1, 3) AND ready_at IS NULL"},
		{"not waiting with a ready time", "status NOT IN (1, 3) AND ready_at IS NOT NULL"},
		{"leased without a lease", "status IN (2, 6) AND (lease_owner IS NULL OR lease_expires_at IS NULL)"},
		{"not leased with a lease", "status NOT IN (2, 6) AND (lease_owner IS NOT NULL OR lease_expires_at IS NOT NULL)"},
		{"terminal without a finish time", "status IN (4, 5, 7, 8, 9) AND finished_at IS NULL"},
		{"unfinished with a finish time", "status NOT IN (4, 5, 7, 8, 9) AND finished_at IS NOT NULL"},
		{"an unknown status", "status NOT BETWEEN 1 AND 9"},
	}
	for _, c := range checks {
		var n int64
		if err := q.pool.QueryRow(ctx, `SELECT count(*) FROM `+q.sql.tasks+` WHERE `+c.cond).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			errs = append(errs, fmt.Errorf("%d tasks %s", n, c.what))
		}
	}
	var orphans int64
	if err := q.pool.QueryRow(ctx, `SELECT count(*) FROM `+q.schemaName()+`.outbox o
		WHERE NOT EXISTS (SELECT 1 FROM `+q.sql.tasks+` t WHERE t.key = o.key)`).Scan(&orphans); err != nil {
		return err
	}
	if orphans > 0 {
		errs = append(errs, fmt.Errorf("%d deliveries of tasks that do not exist", orphans))
	}
	if len(errs) > 0 {
		return fmt.Errorf("postgres: check: %w", errors.Join(errs...))
	}
	return nil
}
