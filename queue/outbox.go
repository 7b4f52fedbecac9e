package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"maps"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/task"
)

// The outbox holds the deliveries of finished tasks until a destination
// has them. An entry is written in the transaction that finishes its task,
// so a crash between finishing and delivering loses none.
//
// Outbox key: dueNs(8) key16 kind(1) finishedNs(8) -> tries(4) lastError.
// finishedNs names the finish the delivery is for (a task retried and
// finished again owes another); entries written before it was kept lack
// it (25 bytes).
var bOutbox = []byte("outbox")

const (
	kindSuccess byte = 's'
	kindFailure byte = 'f'
)

func kindName(k byte) string {
	if k == kindSuccess {
		return task.OnSuccess
	}
	return task.OnFailure
}

// MaxDeliveryHistory bounds the settled deliveries kept in a task's
// history; pending ones are all kept (see TrimDeliveries).
const MaxDeliveryHistory = 8

// Delivery is one pending result delivery.
type Delivery struct {
	TaskID string
	Target string
	// Destination is task.OnSuccess or task.OnFailure.
	Destination string
	// Tries counts the earlier tries.
	Tries int
	// FinishedAt is when the task finished as this delivery reports; zero
	// if the store does not say. A task retried since has finished again.
	FinishedAt time.Time
	// Key is the backend's own handle for the delivery.
	Key []byte
}

// DeliveryResult is how a delivery try ended.
type DeliveryResult struct {
	// Error is empty when the destination has the record.
	Error string
	// RetryAt, when not zero and Error is set, schedules another try;
	// zero with an Error gives up: the delivery is failed.
	RetryAt time.Time
}

// SetDestinations implements Backend: from now on, target's finishes
// write a delivery for onSuccess (a Succeeded task) and onFailure (any
// other terminal status) when set.
func (q *Queue) SetDestinations(target string, onSuccess, onFailure bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	rules := maps.Clone(q.destinations)
	if rules == nil {
		rules = map[string]uint8{}
	}
	var r uint8
	if onSuccess {
		r |= 1
	}
	if onFailure {
		r |= 2
	}
	rules[target] = r
	q.destinations = rules
}

// outbox writes the delivery that a task's finish owes, if its target has
// a destination for it. The caller holds the writer of a task moving into
// a terminal status.
func (w *writer) outbox(key []byte, m *jobMeta, s *state, to task.Status) error {
	kind, bit := kindFailure, uint8(2)
	if to == task.Succeeded {
		kind, bit = kindSuccess, 1
	}
	if w.destinations[m.target]&bit == 0 {
		return nil
	}
	k := binary.BigEndian.AppendUint64(append(timeKey(w.now, key), kind), uint64(s.FinishedAt.UnixNano()))
	if err := w.tx.Bucket(bOutbox).Put(k, outboxValue(0, "")); err != nil {
		return err
	}
	s.Deliveries = TrimDeliveries(append(s.Deliveries, task.Delivery{Destination: kindName(kind), Status: task.DeliveryPending, UpdatedAt: w.now}))
	w.notices = append(w.notices, Notice{Kind: DeliveryReady})
	return nil
}

// supersede settles the deliveries still pending when a retry takes the
// task out of its terminal status; see task.DeliverySuperseded. Sending
// them later would give their destination the next finish's record, twice.
func (w *writer) supersede(key []byte, s *state) error {
	pending := Supersede(s.Deliveries, w.now)
	if pending == 0 {
		return nil
	}
	// The outbox is ordered by due time, not by task: only the retry of a
	// task whose delivery is still pending looks through it.
	ob := w.tx.Bucket(bOutbox)
	var stale [][]byte
	c := ob.Cursor()
	for k, _ := c.First(); k != nil && len(stale) < pending; k, _ = c.Next() {
		if outboxKeyOK(k) && bytes.Equal(k[8:24], key) {
			stale = append(stale, bytes.Clone(k))
		}
	}
	for _, k := range stale {
		if err := ob.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Supersede marks the pending deliveries of ds superseded at now and
// returns how many there were. Every backend settles a retried task's
// deliveries with it.
func Supersede(ds []task.Delivery, now time.Time) int {
	n := 0
	for i := range ds {
		if d := &ds[i]; d.Status == task.DeliveryPending {
			d.Status, d.UpdatedAt = task.DeliverySuperseded, now
			n++
		}
	}
	return n
}

// TrimDeliveries drops the oldest settled deliveries past
// MaxDeliveryHistory. Pending ones stay, whatever their number: each has
// its outbox entry, which FinishDelivery records on the task. Every
// backend trims a task's history with it.
func TrimDeliveries(ds []task.Delivery) []task.Delivery {
	for len(ds) > MaxDeliveryHistory {
		i := slices.IndexFunc(ds, func(d task.Delivery) bool { return d.Status != task.DeliveryPending })
		if i < 0 {
			break
		}
		ds = slices.Delete(ds, i, i+1)
	}
	return ds
}

// outboxKeyOK reports whether k has an outbox key's length, with or
// without its finish time.
func outboxKeyOK(k []byte) bool { return len(k) == 25 || len(k) == 33 }

// outboxFinish returns the finish time an outbox key names, or zero for an
// entry that does not say.
func outboxFinish(k []byte) time.Time {
	if len(k) != 33 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[25:]))).UTC()
}

func outboxValue(tries int, lastError string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(tries)), lastError...)
}

// PendingDeliveries implements Backend: up to max deliveries due by now,
// leaving out those skip names (by Delivery.Key, as a string), and the due
// time of the first one not yet due.
func (q *Queue) PendingDeliveries(ctx context.Context, now time.Time, max int, skip func(key string) bool) ([]*Delivery, time.Time, error) {
	if err := ctx.Err(); err != nil {
		return nil, time.Time{}, err
	}
	var out []*Delivery
	var next time.Time
	nowNs := uint64(now.UnixNano())
	err := q.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bOutbox).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if due := binary.BigEndian.Uint64(k); due > nowNs {
				next = time.Unix(0, int64(due)).UTC()
				return nil
			}
			if len(out) == max {
				return nil
			}
			if skip(string(k)) || !outboxKeyOK(k) || len(v) < 4 {
				continue
			}
			d := &Delivery{Destination: kindName(k[24]), Tries: int(binary.BigEndian.Uint32(v)), FinishedAt: outboxFinish(k), Key: bytes.Clone(k)}
			if m, _, err := decodeMeta(tx.Bucket(bTasks).Get(k[8:24])); err == nil {
				d.TaskID, d.Target = taskID(k[8:24], m), m.target
			} else {
				d.TaskID = ulidString(k[8:24]) // purged or damaged: FinishDelivery drops it
			}
			out = append(out, d)
		}
		return nil
	})
	return out, next, err
}

// FinishDelivery implements Backend.
func (q *Queue) FinishDelivery(ctx context.Context, d *Delivery, res DeliveryResult) error {
	return q.submit(ctx, &deliveryOp{d: d, res: res})
}

type deliveryOp struct {
	d   *Delivery
	res DeliveryResult
}

func (o *deliveryOp) apply(w *writer) error {
	k := o.d.Key
	ob := w.tx.Bucket(bOutbox)
	if !outboxKeyOK(k) || ob.Get(k) == nil {
		return nil // already finished, or superseded by a retry
	}
	if err := ob.Delete(k); err != nil {
		return err
	}
	key, tries := k[8:24], o.d.Tries+1
	status := task.DeliveryDelivered
	switch {
	case o.res.Error != "" && !o.res.RetryAt.IsZero():
		status = task.DeliveryPending
		// Due later; the rest of the key (task, kind, finish) stays.
		if err := ob.Put(append(timeKey(o.res.RetryAt, nil), k[8:]...), outboxValue(tries, o.res.Error)); err != nil {
			return err
		}
		w.notices = append(w.notices, Notice{Kind: DeliveryReady})
	case o.res.Error != "":
		status = task.DeliveryFailed
	}
	m, s, err := w.load(key)
	if err != nil {
		w.damaged(key, "delivery not recorded on the task", err)
		return nil
	}
	if m == nil {
		return nil // a task gone (purged) takes its deliveries' history with it
	}
	for i := len(s.Deliveries) - 1; i >= 0; i-- {
		dv := &s.Deliveries[i]
		if dv.Destination == o.d.Destination && dv.Status == task.DeliveryPending {
			dv.Status, dv.Tries, dv.LastError, dv.UpdatedAt = status, tries, o.res.Error, w.now
			break
		}
	}
	s.Deliveries = TrimDeliveries(s.Deliveries)
	return w.putState(key, s)
}
