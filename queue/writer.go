package queue

import (
	"bytes"
	"encoding/binary"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/task"
)

// writer is one write transaction as the ops see it: bucket handles,
// status moves that keep every index in step, and what to announce after
// the commit.
type writer struct {
	q   *Queue
	tx  *bolt.Tx
	now time.Time

	tasks, states, ids, ready, index, counts, done, idem, blobs *bolt.Bucket

	// destinations is the outbox rule per target, as of this batch.
	destinations map[string]uint8
	// countDelta collects counter changes, written once per transaction.
	countDelta map[countID]int64
	// kbuf builds index keys; see timeKey.
	kbuf []byte
	// cursors holds one cursor per bucket for get and del.
	cursors map[*bolt.Bucket]*bolt.Cursor
	notices []Notice
	wake    bool // a task became ready, or the earliest ready time may have moved
}

func (w *writer) cacheBuckets() {
	b := w.tx.Bucket
	w.tasks, w.states, w.ids, w.ready, w.index = b(bTasks), b(bState), b(bIDs), b(bReady), b(bIndex)
	w.counts, w.done, w.idem, w.blobs = b(bCounts), b(bDone), b(bIdem), b(bBlobs)
	// Append-mostly buckets: ULID and time keys grow, so pack pages full.
	w.tasks.FillPercent = 1.0
	w.done.FillPercent = 1.0
}

// sub returns target's bucket of a per-target index (ready or status),
// creating it if needed. Both grow at the end of each range (ready times,
// and ULIDs within a status), so their pages are packed full too.
func (w *writer) sub(parent *bolt.Bucket, target string) (*bolt.Bucket, error) {
	b := parent.Bucket([]byte(target))
	if b == nil {
		var err error
		if b, err = parent.CreateBucket([]byte(target)); err != nil {
			return nil, err
		}
	}
	b.FillPercent = 1.0
	return b, nil
}

// timeKey is timeKey(t, key) built in w's key buffer, and statusKey is
// statusKey(s, key): they save an allocation per index entry. Such a key is
// valid until the next one is built and may only be passed to Put, Get,
// Delete, get and del, which keep none of their key (bbolt's Put stores a
// copy since v1.4); a value is kept until the commit and must never come
// from it.
func (w *writer) timeKey(t time.Time, key []byte) []byte {
	w.kbuf = append(binary.BigEndian.AppendUint64(w.kbuf[:0], uint64(t.UnixNano())), key...)
	return w.kbuf
}

func (w *writer) statusKey(s task.Status, key []byte) []byte {
	w.kbuf = append(append(w.kbuf[:0], statusByte(s)), key...)
	return w.kbuf
}

// get is b.Get(key), and del is b.Delete(key), through a cursor kept for
// the transaction. bbolt's Get, Put and Delete each make a new cursor whose
// path stack grows by reallocation: half of bbolt's search time in the
// committer's profile, which a cursor repositioned by Seek does not pay.
func (w *writer) get(b *bolt.Bucket, key []byte) []byte {
	k, v := w.cursor(b).Seek(key)
	if !bytes.Equal(k, key) {
		return nil
	}
	return v
}

func (w *writer) del(b *bolt.Bucket, key []byte) error {
	c := w.cursor(b)
	if k, _ := c.Seek(key); !bytes.Equal(k, key) {
		return nil
	}
	return c.Delete()
}

func (w *writer) cursor(b *bolt.Bucket) *bolt.Cursor {
	c, ok := w.cursors[b]
	if !ok {
		if w.cursors == nil {
			w.cursors = make(map[*bolt.Bucket]*bolt.Cursor)
		}
		c = b.Cursor()
		w.cursors[b] = c
	}
	return c
}

// countID names a counter without building its key.
type countID struct {
	target string
	status task.Status
}

func (w *writer) count(target string, s task.Status, delta int64) {
	if w.countDelta == nil {
		w.countDelta = make(map[countID]int64)
	}
	w.countDelta[countID{target, s}] += delta
}

func (w *writer) flushCounts() error {
	for id, d := range w.countDelta {
		if d == 0 {
			continue
		}
		k := countKey(id.target, id.status)
		var n int64
		if v := w.counts.Get(k); len(v) == 8 {
			n = int64(binary.BigEndian.Uint64(v))
		}
		n += d
		if n == 0 {
			if err := w.counts.Delete(k); err != nil {
				return err
			}
			continue
		}
		if err := w.counts.Put(k, binary.BigEndian.AppendUint64(nil, uint64(n))); err != nil {
			return err
		}
	}
	return nil
}

// liveCount is the target's unfinished tasks as committed plus this
// transaction's changes so far.
func (w *writer) liveCount(target string) int64 {
	var n int64
	for _, s := range task.Statuses {
		if !unfinished(s) {
			continue
		}
		if v := w.counts.Get(countKey(target, s)); len(v) == 8 {
			n += int64(binary.BigEndian.Uint64(v))
		}
		n += w.countDelta[countID{target, s}]
	}
	return n
}

// insert adds the index entries of a new task in status s (Enqueued).
func (w *writer) insert(key []byte, target string, readyAt time.Time) error {
	rb, err := w.sub(w.ready, target)
	if err != nil {
		return err
	}
	if err := rb.Put(w.timeKey(readyAt, key), nil); err != nil {
		return err
	}
	ib, err := w.sub(w.index, target)
	if err != nil {
		return err
	}
	if err := ib.Put(w.statusKey(task.Enqueued, key), nil); err != nil {
		return err
	}
	w.count(target, task.Enqueued, 1)
	w.wake = true
	return nil
}

// move changes a task's status from s.Status to to and keeps every index in
// step. The caller has checked the transition and set the state's other
// fields; readyAt is the next attempt's time when to is a waiting status.
// move stamps FinishedAt, records the event and writes the state.
func (w *writer) move(key []byte, m *jobMeta, s *state, to task.Status, readyAt time.Time, detail string) error {
	from := s.Status
	ib, err := w.sub(w.index, m.target)
	if err != nil {
		return err
	}
	if err := w.del(ib, w.statusKey(from, key)); err != nil {
		return err
	}
	if err := ib.Put(w.statusKey(to, key), nil); err != nil {
		return err
	}
	w.count(m.target, from, -1)
	w.count(m.target, to, 1)

	if waiting(from) {
		if rb := w.ready.Bucket([]byte(m.target)); rb != nil {
			if err := w.del(rb, w.timeKey(s.ReadyAt, key)); err != nil {
				return err
			}
		}
	}
	if waiting(to) {
		s.ReadyAt = readyAt
		rb, err := w.sub(w.ready, m.target)
		if err != nil {
			return err
		}
		if err := rb.Put(w.timeKey(s.ReadyAt, key), nil); err != nil {
			return err
		}
		w.wake = true
	}
	if from.Terminal() {
		if err := w.del(w.done, w.timeKey(s.FinishedAt, key)); err != nil {
			return err
		}
		s.FinishedAt = time.Time{}
		if err := w.supersede(key, s); err != nil {
			return err
		}
	}
	if to.Terminal() {
		s.FinishedAt = w.now
		if err := w.done.Put(w.timeKey(s.FinishedAt, key), nil); err != nil {
			return err
		}
		if err := w.outbox(key, m, s, to); err != nil {
			return err
		}
	}
	s.Status = to
	s.addEvent(task.Event{Time: w.now, Status: to, Attempt: s.Attempts, Detail: detail})
	return w.putState(key, s)
}

// loadState is loadState in w's transaction.
func (w *writer) loadState(key []byte, m *jobMeta) (*state, error) {
	return stateOf(key, m, w.get(w.states, key))
}

func (w *writer) putState(key []byte, s *state) error {
	return w.states.Put(key, encodeState(s))
}

// damaged logs a task whose records cannot be decoded, and what was done
// without it: a damaged record fails the op that needs it (or is passed
// over), never the whole commit it shares with other ops.
func (w *writer) damaged(key []byte, what string, err error) {
	w.q.log.Error("offload queue: a stored task cannot be decoded; "+what, "id", ulidString(key), "err", err)
}

// load reads a task for change. It returns (nil, nil, nil) when key has no
// task, and an error only for a corrupt record.
func (w *writer) load(key []byte) (*jobMeta, *state, error) {
	rec := w.get(w.tasks, key)
	if rec == nil {
		return nil, nil, nil
	}
	m, _, err := decodeMeta(rec)
	if err != nil {
		return nil, nil, err
	}
	s, err := w.loadState(key, m)
	if err != nil {
		return nil, nil, err
	}
	return m, s, nil
}
