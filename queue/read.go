package queue

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/task"
)

// GetTask implements task.Store. The task's inline request body is
// included; a blob body is not.
func (q *Queue) GetTask(ctx context.Context, id string) (*task.Task, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var t *task.Task
	err := q.db.View(func(tx *bolt.Tx) error {
		key := resolve(tx, id)
		if key == nil {
			return fmt.Errorf("queue: %s: %w", id, task.ErrNotFound)
		}
		var err error
		t, err = readTask(tx, q.opts.Sealer, key, true)
		return err
	})
	return t, err
}

// readTask reads the task stored under key, opening its sealed parts with
// sl.
func readTask(tx *bolt.Tx, sl Sealer, key []byte, withBody bool) (*task.Task, error) {
	rec := tx.Bucket(bTasks).Get(key)
	m, reqBytes, err := decodeMeta(rec)
	if err != nil {
		return nil, fmt.Errorf("queue: task %s: %w", ulidString(key), err)
	}
	s, err := loadState(tx, key, m)
	if err != nil {
		return nil, err
	}
	req, err := openRequest(sl, key, rec, m, reqBytes)
	if err != nil {
		// Still show the task: its status says Invalid once a lease finds
		// it (a sealed request without its key, too).
		req = nil
	}
	t := buildTask(key, m, s, req, withBody)
	fillResponse(t, sl, key, s)
	return t, nil
}

// keyRange is [lo, hi) in key16 space; nil hi is unbounded.
type keyRange struct{ lo, hi []byte }

func (r keyRange) contains(k []byte) bool {
	return bytes.Compare(k, r.lo) >= 0 && (r.hi == nil || bytes.Compare(k, r.hi) < 0)
}

func msKey(ms uint64) []byte {
	var id ulid.ULID
	_ = id.SetTime(min(ms, ulid.MaxTime()))
	return id[:]
}

// increment returns the smallest key16 greater than k, or nil past the end.
func increment(k []byte) []byte {
	out := bytes.Clone(k)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out
		}
	}
	return nil
}

// source walks one bucket, or the part of it behind a one-byte prefix, in
// key16 order within a range.
type source struct {
	c      *bolt.Cursor
	prefix []byte
	r      keyRange
	desc   bool
	key    []byte // current key16; nil when done
}

func (s *source) first() {
	var k []byte
	if !s.desc {
		k, _ = s.c.Seek(append(bytes.Clone(s.prefix), s.r.lo...))
	} else {
		var end []byte
		switch {
		case s.r.hi != nil:
			end = append(bytes.Clone(s.prefix), s.r.hi...)
		case len(s.prefix) > 0:
			end = []byte{s.prefix[0] + 1}
		}
		if end == nil {
			k, _ = s.c.Last()
		} else if k, _ = s.c.Seek(end); k == nil {
			k, _ = s.c.Last()
		} else {
			k, _ = s.c.Prev()
		}
	}
	s.set(k)
}

func (s *source) next() {
	var k []byte
	if s.desc {
		k, _ = s.c.Prev()
	} else {
		k, _ = s.c.Next()
	}
	s.set(k)
}

func (s *source) set(k []byte) {
	s.key = nil
	if k == nil || !bytes.HasPrefix(k, s.prefix) || len(k) != len(s.prefix)+16 {
		return
	}
	if k = k[len(s.prefix):]; s.r.contains(k) {
		s.key = k
	}
}

// ListTasks implements task.Store. It walks the status index (or the task
// records when no status or target is given) in ID-time order, merging the
// per-target, per-status ranges, so a page costs what it returns.
func (q *Queue) ListTasks(ctx context.Context, f task.Filter) (*task.Page, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.Limit <= 0 || f.Limit > task.MaxLimit {
		f.Limit = task.DefaultLimit
	}
	desc := f.Order != task.OldestFirst
	cur, err := ParseCursor(f.Cursor)
	if err != nil {
		return nil, err
	}
	r := keyRange{lo: make([]byte, 16)}
	if !f.Since.IsZero() && f.Since.UnixMilli() > 0 {
		r.lo = msKey(uint64(f.Since.UnixMilli()))
	}
	if !f.Until.IsZero() {
		// Keys hold milliseconds: the range takes in all of Until's, and
		// createdIn applies both bounds exactly.
		ms := f.Until.UnixMilli()
		if time.UnixMilli(ms).Before(f.Until) {
			ms++
		}
		r.hi = msKey(uint64(max(ms, 0)))
	}
	callerWalk := f.IDPrefix != "" && !(f.IDPrefix[0] >= '0' && f.IDPrefix[0] <= '9')
	if f.IDPrefix != "" && !callerWalk {
		f.IDPrefix = strings.ToUpper(f.IDPrefix) // generated IDs are upper case; Query takes either
		lo, err1 := ulid.ParseStrict(padRight(f.IDPrefix, '0'))
		hi, err2 := ulid.ParseStrict(padRight(f.IDPrefix, 'Z'))
		if err1 != nil || err2 != nil {
			return &task.Page{Tasks: []*task.Task{}}, nil // no generated ID has that prefix
		}
		if bytes.Compare(lo[:], r.lo) > 0 {
			r.lo = lo[:]
		}
		if h := increment(hi[:]); h != nil && (r.hi == nil || bytes.Compare(h, r.hi) < 0) {
			r.hi = h
		}
	}
	page := &task.Page{Tasks: []*task.Task{}}
	err = q.db.View(func(tx *bolt.Tx) error {
		if callerWalk {
			return listCallerIDs(ctx, tx, q.opts.Sealer, f, r, cur, desc, page)
		}
		if cur != nil {
			if cur.Kind != CursorKey {
				return fmt.Errorf("%w: cursor from another listing", task.ErrInvalidFilter)
			}
			if desc {
				if r.hi == nil || bytes.Compare(cur.Key, r.hi) < 0 {
					r.hi = cur.Key
				}
			} else if next := increment(cur.Key); next != nil && bytes.Compare(next, r.lo) > 0 {
				r.lo = next
			}
		}
		return listKeys(ctx, tx, q.opts.Sealer, f, sources(tx, f, r, desc), desc, page)
	})
	if err != nil {
		return nil, err
	}
	return page, nil
}

func padRight(s string, c byte) string {
	if len(s) >= ulid.EncodedSize {
		return s[:ulid.EncodedSize]
	}
	return s + strings.Repeat(string(c), ulid.EncodedSize-len(s))
}

func sources(tx *bolt.Tx, f task.Filter, r keyRange, desc bool) []*source {
	statuses := f.Statuses
	if len(statuses) == 0 && f.Target == "" {
		return []*source{{c: tx.Bucket(bTasks).Cursor(), r: r, desc: desc}}
	}
	if len(statuses) == 0 {
		statuses = task.Statuses
	}
	var targets [][]byte
	index := tx.Bucket(bIndex)
	if f.Target != "" {
		targets = [][]byte{[]byte(f.Target)}
	} else {
		_ = index.ForEachBucket(func(name []byte) error {
			targets = append(targets, bytes.Clone(name))
			return nil
		})
	}
	var out []*source
	for _, t := range targets {
		b := index.Bucket(t)
		if b == nil {
			continue
		}
		for _, st := range slices.Compact(slices.Sorted(slices.Values(statuses))) {
			out = append(out, &source{c: b.Cursor(), prefix: []byte{statusByte(st)}, r: r, desc: desc})
		}
	}
	return out
}

func listKeys(ctx context.Context, tx *bolt.Tx, sl Sealer, f task.Filter, srcs []*source, desc bool, page *task.Page) error {
	for _, s := range srcs {
		s.first()
	}
	var lastKey []byte
	for {
		var best *source
		for _, s := range srcs {
			if s.key == nil {
				continue
			}
			if best == nil || (bytes.Compare(s.key, best.key) < 0) != desc {
				best = s
			}
		}
		if best == nil {
			return nil
		}
		if len(page.Tasks) == f.Limit {
			page.Next = Cursor{Kind: CursorKey, Key: lastKey}.String()
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		key := bytes.Clone(best.key)
		best.next()
		t, err := readTask(tx, sl, key, false)
		if err != nil {
			return err
		}
		if f.IDPrefix != "" && !strings.HasPrefix(t.ID, f.IDPrefix) {
			continue // a caller-chosen ID whose key falls in the prefix's range
		}
		if !createdIn(f, t) {
			continue // in Since's or Until's millisecond, outside the bound
		}
		page.Tasks = append(page.Tasks, t)
		lastKey = key
	}
}

// listCallerIDs serves an ID prefix of the caller-chosen kind: it walks the
// caller-ID index in ID order from the prefix.
func listCallerIDs(ctx context.Context, tx *bolt.Tx, sl Sealer, f task.Filter, r keyRange, cur *Cursor, desc bool, page *task.Page) error {
	if cur != nil && cur.Kind != CursorCallerID {
		return fmt.Errorf("%w: cursor from another listing", task.ErrInvalidFilter)
	}
	prefix := []byte(f.IDPrefix)
	c := tx.Bucket(bIDs).Cursor()
	var k, key []byte
	switch {
	case !desc && cur != nil:
		if k, key = c.Seek(cur.Key); k != nil && bytes.Equal(k, cur.Key) {
			k, key = c.Next()
		}
	case !desc:
		k, key = c.Seek(prefix)
	default:
		end := increment(prefix) // the first key past every key with the prefix
		if cur != nil {
			end = cur.Key
		}
		if end == nil {
			k, key = c.Last()
		} else if k, key = c.Seek(end); k == nil {
			k, key = c.Last()
		} else {
			k, key = c.Prev()
		}
	}
	statusOK := func(s task.Status) bool { return len(f.Statuses) == 0 || slices.Contains(f.Statuses, s) }
	var lastID []byte
	for ; k != nil && bytes.HasPrefix(k, prefix); k, key = step(c, desc) {
		if !r.contains(key) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		t, err := readTask(tx, sl, bytes.Clone(key), false)
		if err != nil {
			return err
		}
		if (f.Target != "" && t.Target != f.Target) || !statusOK(t.Status) || !createdIn(f, t) {
			continue
		}
		if len(page.Tasks) == f.Limit {
			page.Next = Cursor{Kind: CursorCallerID, Key: lastID}.String()
			return nil
		}
		page.Tasks = append(page.Tasks, t)
		lastID = bytes.Clone(k)
	}
	return nil
}

// createdIn applies Since and Until to the creation time itself; key
// ranges apply them only to the millisecond.
func createdIn(f task.Filter, t *task.Task) bool {
	return (f.Since.IsZero() || !t.CreatedAt.Before(f.Since)) && (f.Until.IsZero() || t.CreatedAt.Before(f.Until))
}

func step(c *bolt.Cursor, desc bool) ([]byte, []byte) {
	if desc {
		return c.Prev()
	}
	return c.Next()
}
