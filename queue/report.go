package queue

import (
	"context"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/task"
)

// MaxLogs bounds the log records kept with a task: the latest ones.
const MaxLogs = 100

// Report is what a running attempt reported since its last Report.
type Report struct {
	Progress *task.Progress
	Logs     []task.LogRecord
}

func (r *Report) empty() bool { return r == nil || (r.Progress == nil && len(r.Logs) == 0) }

// apply adds r to s: the latest progress, and the logs kept to MaxLogs.
func (r *Report) apply(s *state) {
	if r.empty() {
		return
	}
	if r.Progress != nil {
		s.Progress = r.Progress
	}
	s.Logs = append(s.Logs, r.Logs...)
	if over := len(s.Logs) - MaxLogs; over > 0 {
		s.Logs = append(s.Logs[:0], s.Logs[over:]...)
	}
}

// Report implements Backend. It wraps task.ErrLeaseLost when the attempt
// no longer holds the task.
func (q *Queue) Report(ctx context.Context, l *Lease, r *Report) error {
	if r.empty() {
		return nil
	}
	o := &reportOp{lease: l, report: r}
	if err := q.submit(ctx, o); err != nil {
		return err
	}
	return o.err
}

type reportOp struct {
	lease  *Lease
	report *Report
	err    error
}

func (o *reportOp) apply(w *writer) error {
	m, s, err := w.load(o.lease.Key)
	if err != nil {
		o.err = fmt.Errorf("queue: report %s: %w", o.lease.ID, err)
		return nil
	}
	if m == nil || (s.Status != task.Running && s.Status != task.Stopping) || s.Attempts != o.lease.Attempt {
		o.err = fmt.Errorf("queue: report %s attempt %d: %w", o.lease.ID, o.lease.Attempt, task.ErrLeaseLost)
		return nil
	}
	o.report.apply(s)
	return w.putState(o.lease.Key, s)
}

// CountTasks implements task.Store from the counters kept in the same
// transactions as the status changes: O(targets x statuses), whatever the
// backlog.
func (q *Queue) CountTasks(ctx context.Context) ([]task.Count, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []task.Count
	err := q.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bCounts).ForEach(func(k, v []byte) error {
			if len(k) < 2 || len(v) != 8 || k[len(k)-2] != 0 {
				return nil
			}
			st, ok := statusOf(k[len(k)-1])
			if !ok {
				return nil
			}
			out = append(out, task.Count{Target: string(k[:len(k)-2]), Status: st, N: int64(binary.BigEndian.Uint64(v))})
			return nil
		})
	})
	return out, err
}
