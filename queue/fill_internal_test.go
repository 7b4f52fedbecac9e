package queue

import (
	"github.com/oklog/ulid/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/internal/reqcodec"
)

// FillForBench stores n Enqueued tasks for target, perTx to a transaction,
// through the same op and index code that Enqueue uses (enqueueOp.apply,
// writer.insert, flushCounts), so the file has the layout that real
// enqueues give it. key(i) is the i-th task's key; its ULID time is the
// task's creation and ready time. It bypasses the committer to write large
// transactions, so call it only while nothing else writes to q.
//
// It exists only in test builds, for the benchmarks in package queue_test
// that need a large backlog quickly.
func FillForBench(q *Queue, n, perTx int, target string, req *reqcodec.Request, key func(i int) ulid.ULID) error {
	job := &Job{Target: target, Request: req}
	for start := 0; start < n; start += perTx {
		end := min(start+perTx, n)
		err := q.db.Update(func(tx *bolt.Tx) error {
			w := &writer{q: q, tx: tx, now: q.opts.Now()}
			w.cacheBuckets()
			for i := start; i < end; i++ {
				k := key(i)
				created := ulid.Time(k.Time()).UTC()
				m := &jobMeta{target: target, created: created, readyAt: created}
				o := &enqueueOp{key: k[:], meta: m, job: job, record: appendRecord(nil, m, req)}
				if err := o.apply(w); err != nil {
					return err
				}
				if o.err != nil {
					return o.err
				}
			}
			return w.flushCounts()
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// CommitsForBench returns the ID of the last committed write transaction,
// which grows by one per commit, so that benchmarks can report how many
// operations shared a commit.
func CommitsForBench(q *Queue) int {
	tx, err := q.db.Begin(false)
	if err != nil {
		return 0
	}
	defer tx.Rollback()
	return tx.ID()
}

// PagesWrittenForBench returns how many page writes bbolt has done since
// q was opened, for benchmarks to report the pages written per commit.
func PagesWrittenForBench(q *Queue) int64 {
	st := q.db.Stats()
	return st.TxStats.GetWrite()
}

// GetForBench reads the record stored under key in a read transaction of
// its own and returns its length: the bare bbolt part of a lookup.
func GetForBench(q *Queue, key []byte) int {
	n := 0
	_ = q.db.View(func(tx *bolt.Tx) error {
		n = len(tx.Bucket(bTasks).Get(key))
		return nil
	})
	return n
}
