package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/task"
)

// init checks that the file is an offload queue (making a new file one),
// recovers what a dead process left running, and removes orphaned blobs.
func (q *Queue) init() error {
	err := q.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bMeta)
		if meta == nil {
			empty := true
			_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
			if !empty {
				return ErrNotOffload
			}
		} else if magic := meta.Get(magicKey); !bytes.Equal(magic, formatMagic) {
			return fmt.Errorf("%w: format %q", ErrNotOffload, magic)
		}
		for _, name := range topBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bMeta).Put(magicKey, formatMagic); err != nil {
			return err
		}
		w := &writer{q: q, tx: tx, now: q.opts.Now()}
		w.cacheBuckets()
		rec := &recoverOp{}
		if err := rec.apply(w); err != nil {
			return err
		}
		if rec.n > 0 || len(rec.stops) > 0 {
			q.log.Warn("offload queue: recovered attempts lost with a previous process", "tasks", rec.n, "stopping", len(rec.stops))
		}
		q.leftoverStops = rec.stops
		return w.flushCounts()
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(q.blobDir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(q.blobDir, 0o700); err != nil { // one made earlier, by hand, may be looser
		return err
	}
	return q.sweepBlobs()
}

// sweepBlobs removes blob files that no task refers to: bodies whose
// enqueue failed or never committed, and ones whose purge did not finish.
func (q *Queue) sweepBlobs() error {
	entries, err := os.ReadDir(q.blobDir)
	if err != nil {
		return err
	}
	return q.db.View(func(tx *bolt.Tx) error {
		refs := tx.Bucket(bBlobs)
		for _, e := range entries {
			if refs.Get([]byte(e.Name())) == nil {
				if err := os.Remove(filepath.Join(q.blobDir, e.Name())); err != nil && !os.IsNotExist(err) {
					return err
				}
			}
		}
		return nil
	})
}

func (q *Queue) purgeLoop() {
	defer q.wg.Done()
	t := time.NewTicker(q.opts.PurgeInterval)
	defer t.Stop()
	for {
		select {
		case <-q.stop:
			return
		case <-t.C:
			if _, err := q.Purge(context.Background()); err != nil {
				q.log.Error("offload queue: purge failed", "err", err)
			}
		}
	}
}

// Purge deletes tasks that finished longer than Options.Retention ago,
// with their blobs, in small transactions, and returns how many it
// deleted. Unfinished tasks are never purged. It runs every
// Options.PurgeInterval on its own; call it to purge now.
func (q *Queue) Purge(ctx context.Context) (int, error) {
	total := 0
	var from []byte
	for {
		o := &purgeOp{before: q.opts.Now().Add(-q.opts.Retention), from: from}
		if err := q.submit(ctx, o); err != nil {
			return total, err
		}
		for _, name := range o.blobs {
			if err := os.Remove(filepath.Join(q.blobDir, name)); err != nil && !os.IsNotExist(err) {
				q.log.Warn("offload queue: remove blob", "blob", name, "err", err)
			}
		}
		total += o.n
		if o.next == nil {
			return total, nil
		}
		from = o.next
	}
}

// purgeOp deletes up to purgeBatch of the tasks that finished before
// before, looking from the done index's key from on. Tasks it skips (their
// deliveries are pending) do not stop the purge: next is where the next
// batch starts, nil when the look reached the end of the expired ones.
type purgeOp struct {
	before time.Time
	from   []byte
	n      int
	next   []byte
	blobs  []string
}

func (o *purgeOp) apply(w *writer) error {
	limit := uint64(o.before.UnixNano())
	var keys [][]byte
	c := w.done.Cursor()
	k, _ := c.First()
	if o.from != nil {
		k, _ = c.Seek(o.from)
	}
	for ; k != nil && binary.BigEndian.Uint64(k) < limit; k, _ = c.Next() {
		if len(keys) == purgeBatch {
			o.next = append([]byte(nil), k...)
			break
		}
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, dk := range keys {
		key := dk[8:]
		rec := w.get(w.tasks, key)
		m, reqBytes, err := decodeMeta(rec)
		var s *state
		if err == nil {
			s, err = w.loadState(key, m)
		}
		if err != nil {
			w.damaged(key, "not purged", err)
			continue
		}
		if !s.Status.Terminal() {
			return fmt.Errorf("done index lists unfinished task %s", ulidString(key))
		}
		if slices.ContainsFunc(s.Deliveries, func(d task.Delivery) bool { return d.Status == task.DeliveryPending }) {
			continue // purged once its deliveries are over, on a later pass
		}
		if blob, err := recordBlob(m, reqBytes); err == nil && blob != "" {
			o.blobs = append(o.blobs, blob)
			if err := w.del(w.blobs, []byte(blob)); err != nil {
				return err
			}
		}
		if ib := w.index.Bucket([]byte(m.target)); ib != nil {
			if err := w.del(ib, w.statusKey(s.Status, key)); err != nil {
				return err
			}
		}
		w.count(m.target, s.Status, -1)
		if m.callerID != "" {
			if err := w.del(w.ids, []byte(m.callerID)); err != nil {
				return err
			}
		}
		if m.idemKey != "" {
			if err := w.del(w.idem, idemKey(m.target, m.idemKey)); err != nil {
				return err
			}
		}
		for _, d := range []struct {
			b   *bolt.Bucket
			key []byte
		}{{w.done, dk}, {w.states, key}, {w.tasks, key}} {
			if err := w.del(d.b, d.key); err != nil {
				return err
			}
		}
		o.n++
	}
	return nil
}
