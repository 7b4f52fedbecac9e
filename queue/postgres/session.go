package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// session is one transaction on one pooled connection, sent as pipelined
// batches: the first carries BEGIN, the last COMMIT, so that a
// transaction costs one round trip per batch.
type session struct {
	ctx   context.Context
	conn  *pgxpool.Conn
	begun bool
	done  bool
}

func (q *Queue) begin(ctx context.Context) (*session, error) {
	conn, err := q.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return &session{ctx: ctx, conn: conn}, nil
}

// send runs b inside the transaction, calling the callbacks of its queued
// queries, and returns the first error.
func (s *session) send(b *pgx.Batch) error {
	if !s.begun {
		b.QueuedQueries = append([]*pgx.QueuedQuery{{SQL: "BEGIN"}}, b.QueuedQueries...)
		s.begun = true
	}
	return s.conn.SendBatch(s.ctx, b).Close()
}

// commit runs b and commits.
func (s *session) commit(b *pgx.Batch) error {
	b.Queue("COMMIT")
	if err := s.send(b); err != nil {
		return err
	}
	s.done = true
	return nil
}

// close rolls back a transaction that did not commit and returns the
// connection to the pool (which drops it if it is still in a transaction).
func (s *session) close() {
	if s.begun && !s.done && !s.conn.Conn().IsClosed() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = s.conn.Exec(ctx, "ROLLBACK")
		cancel()
	}
	s.conn.Release()
}
