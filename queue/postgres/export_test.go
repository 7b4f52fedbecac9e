package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// Crash stops q as a killed process would: nothing pending is committed,
// no lease is handed back, its heartbeat stops and its connections close.
func (q *Queue) Crash() { q.crash() }

// Commits counts the committer's transactions.
func (q *Queue) Commits() int64 { return q.commits.Load() }

// PauseHeartbeat stops (or resumes) q's heartbeats, as a stalled process
// would.
func (q *Queue) PauseHeartbeat(paused bool) { q.paused.Store(paused) }

// MigrateTo brings schema to version last only, as an older release
// would have left it.
func MigrateTo(ctx context.Context, url, schema string, last int) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return migrateTo(ctx, conn, schema, last)
}

// Migrations is how many migrations this build knows.
var Migrations = len(migrations)

// Reap reaps expired leases now, as the reaper does when one expires.
func (q *Queue) Reap() error { return q.reapExpired() }
