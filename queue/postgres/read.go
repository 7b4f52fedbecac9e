package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/oklog/ulid/v2"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// GetTask implements task.Store: one index look-up, by key for a
// generated ID and by caller ID otherwise. The inline request body is
// included; a blob body is not.
func (q *Queue) GetTask(ctx context.Context, id string) (*task.Task, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sql, arg, ok := q.lookup(id, q.sql.getByKey, q.sql.getByID)
	if !ok {
		return nil, fmt.Errorf("postgres: %s: %w", id, task.ErrNotFound)
	}
	ctx, cancel := q.bind(ctx)
	defer cancel()
	rows, err := q.pool.Query(ctx, sql, arg)
	if err != nil {
		return nil, fmt.Errorf("postgres: get %s: %w", id, err)
	}
	tasks, _, err := collectTasks(rows, true)
	if err != nil {
		return nil, fmt.Errorf("postgres: get %s: %w", id, err)
	}
	if len(tasks) == 0 {
		return nil, fmt.Errorf("postgres: %s: %w", id, task.ErrNotFound)
	}
	return tasks[0], nil
}

// taskScan holds the scan targets of taskCols (and the body).
type taskScan struct {
	key                                                   [16]byte
	callerID, lastError                                   pgtype.Text
	target                                                string
	status                                                int16
	attempts, retryBase                                   int32
	createdAt, enqueuedAt, readyAt, startedAt, finishedAt pgtype.Timestamptz
	events, request                                       []byte
	respStatus                                            pgtype.Int4
	respHeader, respBody                                  []byte
	respSize                                              pgtype.Int8
	progress, logs, deliveries                            []byte
	body                                                  []byte
}

// collectTasks scans taskCols rows into tasks, and returns their keys.
func collectTasks(rows pgx.Rows, withBody bool) ([]*task.Task, [][16]byte, error) {
	defer rows.Close()
	var out []*task.Task
	var keys [][16]byte
	for rows.Next() {
		var s taskScan
		dest := []any{&s.key, &s.callerID, &s.target, &s.status, &s.attempts, &s.retryBase, &s.createdAt,
			&s.enqueuedAt, &s.readyAt, &s.startedAt, &s.finishedAt, &s.lastError, &s.events, &s.request,
			&s.respStatus, &s.respHeader, &s.respBody, &s.respSize, &s.progress, &s.logs, &s.deliveries}
		if withBody {
			dest = append(dest, &s.body)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, nil, err
		}
		t, err := s.task(withBody)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, t)
		keys = append(keys, s.key)
	}
	return out, keys, rows.Err()
}

func (s *taskScan) task(withBody bool) (*task.Task, error) {
	st, err := statusOf(s.status)
	if err != nil {
		return nil, err
	}
	t := &task.Task{
		ID: s.callerID.String, Target: s.target, Status: st, Attempts: int(s.attempts), RetryBase: int(s.retryBase),
		CreatedAt: ts(s.createdAt), EnqueuedAt: ts(s.enqueuedAt), StartedAt: ts(s.startedAt),
		FinishedAt: ts(s.finishedAt), LastError: s.lastError.String,
	}
	if t.ID == "" {
		t.ID = keyID(s.key)
	}
	if waiting(st) {
		t.ReadyAt = ts(s.readyAt)
	}
	if t.Events, err = decodeEvents(s.events, t.CreatedAt); err != nil {
		return nil, fmt.Errorf("task %s: %w", t.ID, err)
	}
	for _, f := range []struct {
		b []byte
		v any
	}{{s.progress, &t.Progress}, {s.logs, &t.Logs}, {s.deliveries, &t.Deliveries}} {
		if len(f.b) > 0 {
			if err := json.Unmarshal(f.b, f.v); err != nil {
				return nil, fmt.Errorf("task %s: %w", t.ID, err)
			}
		}
	}
	if s.respStatus.Valid {
		t.Response = &task.Response{StatusCode: int(s.respStatus.Int32), Body: s.respBody, BodySize: s.respSize.Int64}
		if len(s.respHeader) > 0 {
			var h http.Header
			if err := json.Unmarshal(s.respHeader, &h); err != nil {
				return nil, fmt.Errorf("task %s: response header: %w", t.ID, err)
			}
			t.Response.Header = h
		}
	}
	// A request that cannot be decoded still shows its task: its status
	// says Invalid once a lease finds it.
	if req, err := reqcodec.Decode(s.request); err == nil {
		t.Request = task.Request{
			Method: req.Method, URL: req.RequestURI, Host: req.Host, RemoteAddr: req.RemoteAddr,
			Header: req.Header, BodySize: req.BodySize,
		}
		if len(req.Values) > 0 {
			t.Request.Values = make(map[string]string, len(req.Values))
			for _, kv := range req.Values {
				t.Request.Values[kv.Key] = kv.Value
			}
		}
		if withBody && req.Blob == "" && len(s.body) > 0 {
			t.Request.Body = s.body
		}
	}
	return t, nil
}

// CountTasks implements task.Store from the counters kept in the same
// transactions as the status changes: O(targets x statuses x replicas),
// whatever the backlog.
func (q *Queue) CountTasks(ctx context.Context) ([]task.Count, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ctx, cancel := q.bind(ctx)
	defer cancel()
	rows, err := q.pool.Query(ctx, q.sql.countTasks)
	if err != nil {
		return nil, fmt.Errorf("postgres: count: %w", err)
	}
	defer rows.Close()
	var out []task.Count
	for rows.Next() {
		var c task.Count
		var code int16
		if err := rows.Scan(&c.Target, &code, &c.N); err != nil {
			return nil, fmt.Errorf("postgres: count: %w", err)
		}
		if c.Status, err = statusOf(code); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// ListTasks implements task.Store. Listings walk an index in key order
// (which is creation order): the primary key when no status or target is
// given, else one range of (status, key) or (target, status, key) per
// status, merged, each cut at the page's size. A prefix of a caller-chosen
// ID walks the caller-ID index in ID order. Cursors are keys (or caller
// IDs), so a page costs what it returns, and tasks that change between
// pages are neither repeated nor skipped.
func (q *Queue) ListTasks(ctx context.Context, f task.Filter) (*task.Page, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.Limit <= 0 || f.Limit > task.MaxLimit {
		f.Limit = task.DefaultLimit
	}
	desc := f.Order != task.OldestFirst
	cur, err := queue.ParseCursor(f.Cursor)
	if err != nil {
		return nil, err
	}
	empty := &task.Page{Tasks: []*task.Task{}}
	l := &listing{f: f, desc: desc}
	if !f.Since.IsZero() && f.Since.UnixMilli() > 0 {
		l.lo = msKey(uint64(f.Since.UnixMilli()))
	}
	if !f.Until.IsZero() {
		ms := f.Until.UnixMilli()
		if time.UnixMilli(ms).Before(f.Until) {
			ms++
		}
		if ms <= 0 {
			return empty, nil
		}
		l.hi = msKey(uint64(ms))
	}
	byCaller := f.IDPrefix != "" && !(f.IDPrefix[0] >= '0' && f.IDPrefix[0] <= '9')
	// No task has such a target, and no caller ID such a prefix (the form
	// is prefix-closed): PostgreSQL would refuse what is not UTF-8 text.
	if (f.Target != "" && task.CheckTarget(f.Target) != nil) || (byCaller && task.CheckCallerID(f.IDPrefix) != nil) {
		return empty, nil
	}
	if f.IDPrefix != "" && !byCaller {
		f.IDPrefix = strings.ToUpper(f.IDPrefix) // generated IDs are upper case; Query takes either
		l.f.IDPrefix = f.IDPrefix
		lo, err1 := ulid.ParseStrict(padRight(f.IDPrefix, '0'))
		hi, err2 := ulid.ParseStrict(padRight(f.IDPrefix, 'Z'))
		if err1 != nil || err2 != nil {
			return empty, nil // no generated ID has that prefix
		}
		if l.lo == nil || bytes.Compare(lo[:], l.lo) > 0 {
			l.lo = lo[:]
		}
		if h := incrementKey(hi[:]); h != nil && (l.hi == nil || bytes.Compare(h, l.hi) < 0) {
			l.hi = h
		}
		l.generatedOnly = true
	}
	if cur != nil {
		switch {
		case byCaller != (cur.Kind == queue.CursorCallerID):
			return nil, fmt.Errorf("%w: cursor from another listing", task.ErrInvalidFilter)
		case byCaller:
			if task.CheckCallerID(string(cur.Key)) != nil {
				return nil, fmt.Errorf("%w: cursor names no caller ID", task.ErrInvalidFilter)
			}
			l.afterID = string(cur.Key)
		case desc:
			if l.hi == nil || bytes.Compare(cur.Key, l.hi) < 0 {
				l.hi = cur.Key
			}
		default:
			if next := incrementKey(cur.Key); next == nil {
				return empty, nil
			} else if l.lo == nil || bytes.Compare(next, l.lo) > 0 {
				l.lo = next
			}
		}
	}
	if l.lo != nil && l.hi != nil && bytes.Compare(l.lo, l.hi) >= 0 {
		return empty, nil
	}
	var sql string
	if byCaller {
		sql = l.byCallerSQL(q)
	} else {
		sql = l.byKeySQL(q)
	}
	ctx, cancel := q.bind(ctx)
	defer cancel()
	rows, err := q.pool.Query(ctx, sql, l.args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: list: %w", err)
	}
	tasks, keys, err := collectTasks(rows, false)
	if err != nil {
		return nil, fmt.Errorf("postgres: list: %w", err)
	}
	page := &task.Page{Tasks: tasks}
	if len(tasks) > f.Limit {
		page.Tasks = tasks[:f.Limit]
		if byCaller {
			page.Next = queue.Cursor{Kind: queue.CursorCallerID, Key: []byte(page.Tasks[f.Limit-1].ID)}.String()
		} else {
			page.Next = queue.Cursor{Kind: queue.CursorKey, Key: keys[f.Limit-1][:]}.String()
		}
	}
	if page.Tasks == nil {
		page.Tasks = []*task.Task{}
	}
	return page, nil
}

// listing builds the SQL of one ListTasks call.
type listing struct {
	f             task.Filter
	desc          bool
	lo, hi        []byte // key range [lo, hi); nil is unbounded
	generatedOnly bool
	afterID       string // the cursor of a caller-ID listing
	args          []any
}

func (l *listing) arg(v any) string {
	l.args = append(l.args, v)
	return "$" + strconv.Itoa(len(l.args))
}

// common are the conditions every listing applies: key range, creation
// time (exactly: keys hold milliseconds, the column microseconds, so the
// bounds are rounded up to the microsecond), target.
func (l *listing) common() []string {
	var c []string
	if l.lo != nil {
		c = append(c, "key >= "+l.arg([16]byte(l.lo)))
	}
	if l.hi != nil {
		c = append(c, "key < "+l.arg([16]byte(l.hi)))
	}
	if l.generatedOnly {
		c = append(c, "caller_id IS NULL")
	}
	if !l.f.Since.IsZero() {
		c = append(c, "created_at >= "+l.arg(ceilMicro(l.f.Since)))
	}
	if !l.f.Until.IsZero() {
		c = append(c, "created_at < "+l.arg(ceilMicro(l.f.Until)))
	}
	if l.f.Target != "" {
		c = append(c, "target = "+l.arg(l.f.Target))
	}
	return c
}

func (l *listing) order() string {
	if l.desc {
		return "DESC"
	}
	return "ASC"
}

func (l *listing) byKeySQL(q *Queue) string {
	conds := l.common()
	limit := l.arg(l.f.Limit + 1)
	table := q.sql.tasks
	statuses := slices.Compact(slices.Sorted(slices.Values(l.f.Statuses)))
	if len(statuses) == 0 && l.f.Target == "" {
		return fmt.Sprintf("SELECT %s FROM %s WHERE %s ORDER BY key %s LIMIT %s",
			taskCols, table, where(conds), l.order(), limit)
	}
	if len(statuses) == 0 {
		statuses = task.Statuses
	}
	// One index range per status, each cut at the page's size, merged.
	var parts []string
	for _, st := range statuses {
		c := append(slices.Clone(conds), fmt.Sprintf("status = %d", statusCode(st)))
		parts = append(parts, fmt.Sprintf("(SELECT key FROM %s WHERE %s ORDER BY key %s LIMIT %s)",
			table, where(c), l.order(), limit))
	}
	return fmt.Sprintf("SELECT %s FROM %s WHERE key IN (SELECT key FROM (%s) AS k ORDER BY key %s LIMIT %s) ORDER BY key %s",
		taskCols, table, strings.Join(parts, " UNION ALL "), l.order(), limit, l.order())
}

func (l *listing) byCallerSQL(q *Queue) string {
	conds := l.common()
	p := l.f.IDPrefix
	conds = append(conds, "caller_id >= "+l.arg(p))
	if end := prefixEnd([]byte(p)); end != nil {
		conds = append(conds, "caller_id < "+l.arg(string(end)))
	}
	if l.afterID != "" {
		op := ">"
		if l.desc {
			op = "<"
		}
		conds = append(conds, "caller_id "+op+" "+l.arg(l.afterID))
	}
	if len(l.f.Statuses) > 0 {
		codes := make([]int16, len(l.f.Statuses))
		for i, st := range l.f.Statuses {
			codes[i] = statusCode(st)
		}
		conds = append(conds, "status = ANY("+l.arg(codes)+"::int2[])")
	}
	return fmt.Sprintf("SELECT %s FROM %s WHERE %s ORDER BY caller_id %s LIMIT %s",
		taskCols, q.sql.tasks, where(conds), l.order(), l.arg(l.f.Limit+1))
}

func where(conds []string) string {
	if len(conds) == 0 {
		return "true"
	}
	return strings.Join(conds, " AND ")
}

// ceilMicro rounds t up to the microsecond: for a creation time c stored
// in microseconds, c >= t exactly when c >= ceilMicro(t), and c < t when
// c < ceilMicro(t).
func ceilMicro(t time.Time) time.Time {
	if r := t.Truncate(time.Microsecond); r.Before(t) {
		return r.Add(time.Microsecond)
	}
	return t
}

func padRight(s string, c byte) string {
	if len(s) >= ulid.EncodedSize {
		return s[:ulid.EncodedSize]
	}
	return s + strings.Repeat(string(c), ulid.EncodedSize-len(s))
}

func msKey(ms uint64) []byte {
	var id ulid.ULID
	_ = id.SetTime(min(ms, ulid.MaxTime()))
	return id[:]
}

// incrementKey returns the smallest key of k's length greater than k, or
// nil past the end.
func incrementKey(k []byte) []byte {
	out := bytes.Clone(k)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out
		}
	}
	return nil
}

// prefixEnd returns the smallest string greater than every string that
// starts with p, or nil if there is none.
func prefixEnd(p []byte) []byte {
	out := bytes.Clone(p)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out[:i+1]
		}
	}
	return nil
}
