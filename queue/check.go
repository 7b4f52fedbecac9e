package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/task"
)

// Check walks every task record and every index and returns an error
// listing each disagreement between them (nil if there is none): a task
// missing from an index, an index entry with no task or the wrong status,
// a counter that does not match, a blob that is gone. It reads a
// consistent snapshot and may run while the queue is in use.
func (q *Queue) Check() error {
	var problems []error
	report := func(format string, args ...any) {
		if len(problems) < 50 {
			problems = append(problems, fmt.Errorf(format, args...))
		}
	}
	err := q.db.View(func(tx *bolt.Tx) error {
		if err := checkBolt(tx); err != nil {
			report("bbolt: %v", err)
		}
		type rec struct {
			meta *jobMeta
			st   *state
		}
		tasks := map[string]rec{}
		want := map[string]int64{}
		index, ready := tx.Bucket(bIndex), tx.Bucket(bReady)
		err := tx.Bucket(bTasks).ForEach(func(k, v []byte) error {
			id := ulidString(k)
			m, reqBytes, err := decodeMeta(v)
			if err != nil {
				report("task %s: %v", id, err)
				return nil
			}
			s, err := loadState(tx, k, m)
			if err != nil {
				report("task %s: %v", id, err)
				return nil
			}
			tasks[string(k)] = rec{m, s}
			want[string(countKey(m.target, s.Status))]++
			if ib := index.Bucket([]byte(m.target)); ib == nil || ib.Get(statusKey(s.Status, k)) == nil {
				report("task %s (%s) missing from status index", id, s.Status)
			}
			rb := ready.Bucket([]byte(m.target))
			if waiting(s.Status) && (rb == nil || rb.Get(timeKey(s.ReadyAt, k)) == nil) {
				report("task %s (%s) missing from ready index", id, s.Status)
			}
			if s.Status.Terminal() && tx.Bucket(bDone).Get(timeKey(s.FinishedAt, k)) == nil {
				report("task %s (%s) missing from done index", id, s.Status)
			}
			if m.callerID != "" && !bytes.Equal(tx.Bucket(bIDs).Get([]byte(m.callerID)), k) {
				report("task %s: caller ID %q not mapped to it", id, m.callerID)
			}
			if m.idemKey != "" {
				if v := tx.Bucket(bIdem).Get(idemKey(m.target, m.idemKey)); len(v) != 48 || !bytes.Equal(v[32:], k) {
					report("task %s: idempotency key not mapped to it", id)
				}
			}
			blob, size, err := q.checkRequest(k, v, m, reqBytes)
			if err != nil {
				report("task %s: request: %v", id, err)
			} else if blob != "" {
				if !bytes.Equal(tx.Bucket(bBlobs).Get([]byte(blob)), k) {
					report("task %s: blob %s not registered", id, blob)
				}
				fi, err := os.Stat(filepath.Join(q.blobDir, blob))
				if sealed, _ := blobKind(blob); err == nil && !sealed {
					err = checkBlobSize(fi, size)
				}
				if err != nil {
					report("task %s: blob: %v", id, err)
				}
			}
			if s.SealedResponse != nil && q.opts.Sealer != nil {
				if _, err := openResponse(q.opts.Sealer, k, s.SealedResponse); err != nil {
					report("task %s: response: %v", id, err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		lookup := func(where string, key []byte) (rec, bool) {
			r, ok := tasks[string(key)]
			if !ok {
				report("%s lists %s, which has no record", where, ulidString(key))
			}
			return r, ok
		}
		err = index.ForEachBucket(func(target []byte) error {
			return index.Bucket(target).ForEach(func(k, _ []byte) error {
				st, ok := statusOf(k[0])
				if r, found := lookup("status index", k[1:]); found && (!ok || r.st.Status != st || r.meta.target != string(target)) {
					report("status index says %s/%s/%s, record says %s/%s", target, st, ulidString(k[1:]), r.meta.target, r.st.Status)
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
		err = ready.ForEachBucket(func(target []byte) error {
			return ready.Bucket(target).ForEach(func(k, _ []byte) error {
				if r, ok := lookup("ready index", k[8:]); ok && (!waiting(r.st.Status) || !bytes.Equal(timeKey(r.st.ReadyAt, k[8:]), k)) {
					report("ready index lists %s, which is %s", ulidString(k[8:]), r.st.Status)
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bDone).ForEach(func(k, _ []byte) error {
			if r, ok := lookup("done index", k[8:]); ok && (!r.st.Status.Terminal() || !bytes.Equal(timeKey(r.st.FinishedAt, k[8:]), k)) {
				report("done index lists %s, which is %s", ulidString(k[8:]), r.st.Status)
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bIDs).ForEach(func(id, key []byte) error {
			if r, ok := lookup("caller ID index", key); ok && r.meta.callerID != string(id) {
				report("caller ID %q maps to a task named %q", id, r.meta.callerID)
			}
			return nil
		})
		if err != nil {
			return err
		}
		_ = tx.Bucket(bBlobs).ForEach(func(_, key []byte) error { lookup("blob index", key); return nil })
		_ = tx.Bucket(bIdem).ForEach(func(_, v []byte) error {
			if len(v) == 48 {
				lookup("idempotency index", v[32:])
			}
			return nil
		})
		owed := map[string]bool{} // key16 + kind of every outbox entry
		_ = tx.Bucket(bOutbox).ForEach(func(k, _ []byte) error {
			if !outboxKeyOK(k) {
				report("outbox key %x malformed", k)
				return nil
			}
			owed[string(k[8:25])] = true
			if r, ok := lookup("outbox", k[8:24]); ok && !hasPending(r.st, kindName(k[24])) {
				report("outbox owes %s %s, whose record has no pending delivery", ulidString(k[8:24]), kindName(k[24]))
			}
			return nil
		})
		for key, r := range tasks {
			for _, kind := range []byte{kindSuccess, kindFailure} {
				if hasPending(r.st, kindName(kind)) && !owed[key+string(kind)] {
					report("task %s has a pending %s delivery missing from the outbox", ulidString([]byte(key)), kindName(kind))
				}
			}
		}
		got := map[string]int64{}
		_ = tx.Bucket(bCounts).ForEach(func(k, v []byte) error {
			got[string(k)] = int64(binary.BigEndian.Uint64(v))
			return nil
		})
		for k, n := range want {
			if got[k] != n {
				report("counter %q is %d, records say %d", k, got[k], n)
			}
		}
		for k, n := range got {
			if _, ok := want[k]; !ok {
				report("counter %q is %d, records say 0", k, n)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue: check: %w", err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("queue: check %s: %w", q.path, errors.Join(problems...))
	}
	return nil
}

// checkRequest checks that a record's request decodes and returns its blob
// name and body size. A sealed request is opened when the queue has a
// Sealer; without one, only the plain blob name beside it is checked (the
// size is then -1).
func (q *Queue) checkRequest(key, rec []byte, m *jobMeta, rest []byte) (blob string, bodySize int64, err error) {
	if m.sealed && q.opts.Sealer == nil {
		blob, err = recordBlob(m, rest)
		return blob, -1, err
	}
	req, err := openRequest(q.opts.Sealer, key, rec, m, rest)
	if err != nil {
		return "", 0, err
	}
	return req.Blob, req.BodySize, nil
}

func checkBolt(tx *bolt.Tx) error {
	var errs []error
	for err := range tx.Check() {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func hasPending(s *state, destination string) bool {
	for _, d := range s.Deliveries {
		if d.Destination == destination && d.Status == task.DeliveryPending {
			return true
		}
	}
	return false
}
