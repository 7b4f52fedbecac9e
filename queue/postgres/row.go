package postgres

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/oklog/ulid/v2"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// maxEvents bounds a task's events as the bbolt queue does: the first
// event and the latest ones.
const maxEvents = 64

func statusCode(s task.Status) int16 {
	for i, st := range task.Statuses {
		if st == s {
			return int16(i + 1)
		}
	}
	panic("postgres: unknown status " + string(s)) // statuses come from task constants only
}

func statusOf(c int16) (task.Status, error) {
	if c < 1 || int(c) > len(task.Statuses) {
		return "", fmt.Errorf("postgres: unknown status code %d", c)
	}
	return task.Statuses[c-1], nil
}

func waiting(s task.Status) bool { return s == task.Enqueued || s == task.Retrying }
func leased(s task.Status) bool  { return s == task.Running || s == task.Stopping }

// keyID is the public ID of a task without a caller-chosen one.
func keyID(key [16]byte) string { return ulid.ULID(key).String() }

// Lease modes of a row update.
const (
	leaseClear int16 = iota // no lease: the status is not Running or Stopping
	leaseNew                // a new lease for this replica, expiring LeaseTimeout from now
	leaseKeep               // unchanged
)

// row is a task's mutable state as a transaction changes it.
type row struct {
	key                                                   [16]byte
	callerID, target                                      string
	status                                                task.Status
	attempts, retryBase, throttled                        int
	createdAt, enqueuedAt, readyAt, startedAt, finishedAt time.Time
	leaseOwner                                            [16]byte // zero: none
	lastError                                             string
	events                                                []task.Event
	deliveries                                            []task.Delivery

	dirty     bool
	leaseMode int16
	response  *task.Response // written when not nil
	progress  *task.Progress // written when not nil
	addLogs   []task.LogRecord

	// Read by Lease only.
	request, body []byte
}

func (r *row) id() string {
	if r.callerID != "" {
		return r.callerID
	}
	return keyID(r.key)
}

func (r *row) addEvent(e task.Event) {
	if len(r.events) >= maxEvents {
		r.events = append(r.events[:1], r.events[len(r.events)-maxEvents+2:]...)
	}
	r.events = append(r.events, e)
}

// brief is the task as far as the row knows it (no request, response,
// logs or progress): what Lease reports of the tasks it expired.
func (r *row) brief() *task.Task {
	t := &task.Task{
		ID: r.id(), Target: r.target, Status: r.status, Attempts: r.attempts, RetryBase: r.retryBase,
		CreatedAt: r.createdAt, EnqueuedAt: r.enqueuedAt, StartedAt: r.startedAt, FinishedAt: r.finishedAt,
		LastError: r.lastError, Events: r.events, Deliveries: r.deliveries,
	}
	if waiting(r.status) {
		t.ReadyAt = r.readyAt
	}
	return t
}

// rowScan holds the scan targets of rowCols.
type rowScan struct {
	key                                                   [16]byte
	callerID, lastError                                   pgtype.Text
	target                                                string
	status                                                int16
	attempts, retryBase, throttled                        int32
	createdAt, enqueuedAt, readyAt, startedAt, finishedAt pgtype.Timestamptz
	leaseOwner                                            pgtype.UUID
	events, deliveries                                    []byte
}

func (s *rowScan) dest() []any {
	return []any{&s.key, &s.callerID, &s.target, &s.status, &s.attempts, &s.retryBase, &s.throttled,
		&s.createdAt, &s.enqueuedAt, &s.readyAt, &s.startedAt, &s.finishedAt, &s.leaseOwner, &s.lastError,
		&s.events, &s.deliveries}
}

func (s *rowScan) row() (*row, error) {
	st, err := statusOf(s.status)
	if err != nil {
		return nil, err
	}
	r := &row{
		key: s.key, callerID: s.callerID.String, target: s.target, status: st,
		attempts: int(s.attempts), retryBase: int(s.retryBase), throttled: int(s.throttled),
		createdAt: ts(s.createdAt), enqueuedAt: ts(s.enqueuedAt), readyAt: ts(s.readyAt),
		startedAt: ts(s.startedAt), finishedAt: ts(s.finishedAt), lastError: s.lastError.String,
		leaseMode: leaseKeep,
	}
	if s.leaseOwner.Valid {
		r.leaseOwner = s.leaseOwner.Bytes
	}
	if r.events, err = decodeEvents(s.events, r.createdAt); err != nil {
		return nil, fmt.Errorf("postgres: task %s: %w", r.id(), err)
	}
	if len(s.deliveries) > 0 {
		if err := json.Unmarshal(s.deliveries, &r.deliveries); err != nil {
			return nil, fmt.Errorf("postgres: task %s: deliveries: %w", r.id(), err)
		}
	}
	return r, nil
}

// decodeEvents decodes a task's history; NULL is the history of a task
// unchanged since its enqueue.
func decodeEvents(b []byte, created time.Time) ([]task.Event, error) {
	if len(b) == 0 {
		return []task.Event{{Time: created, Status: task.Enqueued}}, nil
	}
	var ev []task.Event
	if err := json.Unmarshal(b, &ev); err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	return ev, nil
}

// clean makes s storable in text and jsonb, which refuse NUL (jsonb's
// \u0000 too) and, as text, invalid UTF-8: both become U+FFFD, as
// encoding/json does with invalid UTF-8. Strings that handlers and clients
// write (errors, logs, progress, headers, reasons) pass through it, so that
// one odd string cannot fail the transaction that carries other tasks'
// writes.
func clean(s string) string {
	if utf8.ValidString(s) && !strings.Contains(s, "\x00") {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

func cleanResponse(r *task.Response) *task.Response {
	c := *r
	if len(r.Header) > 0 {
		c.Header = make(http.Header, len(r.Header))
		for k, vs := range r.Header {
			cvs := make([]string, len(vs))
			for i, v := range vs {
				cvs[i] = clean(v)
			}
			c.Header[clean(k)] = cvs
		}
	}
	return &c
}

func ts(t pgtype.Timestamptz) time.Time {
	if !t.Valid {
		return time.Time{}
	}
	return t.Time.UTC()
}

func tsArg(t time.Time) pgtype.Timestamptz {
	return pgtype.Timestamptz{Time: t, Valid: !t.IsZero()}
}

func textArg(s string) pgtype.Text { return pgtype.Text{String: s, Valid: s != ""} }

// collectRows scans rowCols rows (and what extra scans) into rows.
func collectRows(rows pgx.Rows, extra func() []any, each func(*row)) error {
	defer rows.Close()
	for rows.Next() {
		var s rowScan
		dest := s.dest()
		if extra != nil {
			dest = append(dest, extra()...)
		}
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		r, err := s.row()
		if err != nil {
			return err
		}
		each(r)
	}
	return rows.Err()
}

type countKey struct {
	target string
	status task.Status
}

type outboxAdd struct {
	key  [16]byte
	kind string
	due  time.Time
}

type outboxRetry struct {
	id    int64
	due   time.Time
	tries int
	err   string
}

// txn is one write transaction as the code above SQL sees it: the rows it
// changes, the counter deltas, the outbox changes, and what to announce
// after the commit.
type txn struct {
	q     *Queue
	shard int16 // the counter shard this transaction writes
	now   time.Time
	rules map[string]uint8
	rows  map[[16]byte]*row

	counts      map[countKey]int64
	outboxAdd   []outboxAdd
	outboxDrop  [][16]byte // tasks whose outbox entries go (see supersede)
	outboxDone  []int64
	outboxRetry []outboxRetry
	notices     []queue.Notice
	wake        bool // a task became ready, or the earliest ready time may have moved
	delivery    bool // a delivery was written or rescheduled
}

// Writers of counter shards. Each replica writes shardsPerReplica shards,
// one per kind of writer: its committer and its lease loop each run one
// transaction at a time, so neither ever waits for the other's counter row
// lock (held until commit, across the WAL flush); the rest (stops,
// retries, reaping, purges) share the third.
const (
	shardCommitter int16 = iota
	shardLease
	shardOther
	shardsPerReplica
)

func (q *Queue) newTxn(writer int16) *txn {
	return &txn{q: q, shard: q.shard + writer, now: q.now(), rules: q.rules(), rows: map[[16]byte]*row{}, counts: map[countKey]int64{}}
}

func (t *txn) count(target string, s task.Status, d int64) {
	t.counts[countKey{target, s}] += d
}

// move changes r's status to to and keeps everything that depends on it
// in step: counters, ready time, finish time, lease, outbox, history. The
// caller has checked the transition and set r's other fields; readyAt is
// the next attempt's time when to is a waiting status.
func (t *txn) move(r *row, to task.Status, readyAt time.Time, detail string) {
	from := r.status
	t.count(r.target, from, -1)
	t.count(r.target, to, 1)
	r.readyAt = time.Time{}
	if waiting(to) {
		r.readyAt = readyAt
		t.wake = true
	}
	switch {
	case to == task.Running:
		r.leaseOwner, r.leaseMode = t.q.owner, leaseNew
	case to == task.Stopping:
		r.leaseMode = leaseKeep
	default:
		r.leaseOwner, r.leaseMode = [16]byte{}, leaseClear
	}
	if from.Terminal() {
		r.finishedAt = time.Time{}
		t.supersede(r)
	}
	if to.Terminal() {
		r.finishedAt = t.now
		t.outbox(r, to)
	}
	r.status = to
	r.addEvent(task.Event{Time: t.now, Status: to, Attempt: r.attempts, Detail: detail})
	r.dirty = true
}

// outbox writes the delivery that r's finish owes, if its target has a
// destination for it.
func (t *txn) outbox(r *row, to task.Status) {
	kind, name, bit := "f", task.OnFailure, uint8(2)
	if to == task.Succeeded {
		kind, name, bit = "s", task.OnSuccess, 1
	}
	if t.rules[r.target]&bit == 0 {
		return
	}
	t.outboxAdd = append(t.outboxAdd, outboxAdd{key: r.key, kind: kind, due: t.now})
	r.deliveries = queue.TrimDeliveries(append(r.deliveries, task.Delivery{Destination: name, Status: task.DeliveryPending, UpdatedAt: t.now}))
	t.delivery = true
}

// supersede settles the deliveries still pending when a retry takes r out
// of its terminal status, as the bbolt queue does; see
// task.DeliverySuperseded.
func (t *txn) supersede(r *row) {
	if queue.Supersede(r.deliveries, t.now) == 0 {
		return
	}
	r.dirty = true
	t.outboxAdd = slices.DeleteFunc(t.outboxAdd, func(o outboxAdd) bool { return o.key == r.key })
	t.outboxDrop = append(t.outboxDrop, r.key)
}

// Notice payloads: a kind byte, the sending replica, and the task ID.
const (
	payloadReady    = 'r'
	payloadStop     = 's'
	payloadDelivery = 'd'
)

func (t *txn) stopRequested(id string) {
	t.notices = append(t.notices, queue.Notice{Kind: queue.StopRequested, ID: id})
}

// finalNotices is what to announce after the commit, here and to the
// other replicas.
func (t *txn) finalNotices() []queue.Notice {
	n := t.notices
	if t.delivery {
		n = append(n, queue.Notice{Kind: queue.DeliveryReady})
	}
	if t.wake {
		n = append(n, queue.Notice{Kind: queue.TaskReady})
	}
	return n
}

// write queues on b the statements that store the transaction's changes:
// the rows, the outbox, the counters (last, in order), the notices.
func (t *txn) write(b *pgx.Batch) error {
	var dirty []*row
	for _, r := range t.rows {
		if r.dirty {
			dirty = append(dirty, r)
		}
	}
	if len(dirty) > 0 {
		slices.SortFunc(dirty, func(a, b *row) int { return slices.Compare(a.key[:], b.key[:]) })
		args, err := updateArgs(dirty, t.q.opts.LeaseTimeout)
		if err != nil {
			return err
		}
		b.Queue(t.q.sql.update, args...)
	}
	if len(t.outboxDrop) > 0 {
		b.Queue(t.q.sql.outboxDrop, t.outboxDrop)
	}
	if len(t.outboxAdd) > 0 {
		keys, kinds, dues := make([][16]byte, len(t.outboxAdd)), make([]string, len(t.outboxAdd)), make([]time.Time, len(t.outboxAdd))
		for i, o := range t.outboxAdd {
			keys[i], kinds[i], dues[i] = o.key, o.kind, o.due
		}
		b.Queue(t.q.sql.outboxAdd, keys, kinds, dues)
	}
	if len(t.outboxDone) > 0 {
		b.Queue(t.q.sql.outboxDone, t.outboxDone)
	}
	if len(t.outboxRetry) > 0 {
		n := len(t.outboxRetry)
		ids, dues, tries, errs := make([]int64, n), make([]time.Time, n), make([]int32, n), make([]string, n)
		for i, o := range t.outboxRetry {
			ids[i], dues[i], tries[i], errs[i] = o.id, o.due, int32(o.tries), o.err
		}
		b.Queue(t.q.sql.outboxRetry, ids, dues, tries, errs)
	}
	var keys []countKey
	for k, d := range t.counts {
		if d != 0 {
			keys = append(keys, k)
		}
	}
	if len(keys) > 0 {
		slices.SortFunc(keys, func(a, b countKey) int {
			return cmp.Or(cmp.Compare(a.target, b.target), cmp.Compare(statusCode(a.status), statusCode(b.status)))
		})
		targets, statuses, deltas := make([]string, len(keys)), make([]int16, len(keys)), make([]int64, len(keys))
		for i, k := range keys {
			targets[i], statuses[i], deltas[i] = k.target, statusCode(k.status), t.counts[k]
		}
		b.Queue(t.q.sql.counts, targets, statuses, deltas, t.shard)
	}
	if payloads := t.q.payloads(t.finalNotices()); len(payloads) > 0 {
		b.Queue(t.q.sql.notify, t.q.channel, payloads)
	}
	return nil
}

func updateArgs(rows []*row, ttl time.Duration) ([]any, error) {
	n := len(rows)
	var (
		keys                                             = make([][16]byte, n)
		statuses, leaseModes                             = make([]int16, n), make([]int16, n)
		attempts, retryBases, throttled, respStatus      = make([]int32, n), make([]int32, n), make([]int32, n), make([]int32, n)
		enqueuedAt, readyAt, startedAt, finishedAt       = make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n), make([]pgtype.Timestamptz, n)
		owners                                           = make([]pgtype.UUID, n)
		lastErrors                                       = make([]pgtype.Text, n)
		events, deliveries, respHeader, progress, addLog = make([][]byte, n), make([][]byte, n), make([][]byte, n), make([][]byte, n), make([][]byte, n)
		setResp                                          = make([]bool, n)
		respBody                                         = make([][]byte, n)
		respSize                                         = make([]int64, n)
	)
	for i, r := range rows {
		keys[i], statuses[i], leaseModes[i] = r.key, statusCode(r.status), r.leaseMode
		attempts[i], retryBases[i], throttled[i] = int32(r.attempts), int32(r.retryBase), int32(r.throttled)
		enqueuedAt[i], readyAt[i], startedAt[i], finishedAt[i] = tsArg(r.enqueuedAt), tsArg(r.readyAt), tsArg(r.startedAt), tsArg(r.finishedAt)
		owners[i] = pgtype.UUID{Bytes: r.leaseOwner, Valid: r.leaseOwner != [16]byte{}}
		lastErrors[i] = textArg(r.lastError)
		var err error
		if events[i], err = json.Marshal(r.events); err != nil {
			return nil, err
		}
		if len(r.deliveries) > 0 {
			if deliveries[i], err = json.Marshal(r.deliveries); err != nil {
				return nil, err
			}
		}
		if resp := r.response; resp != nil {
			setResp[i], respStatus[i], respBody[i], respSize[i] = true, int32(resp.StatusCode), resp.Body, resp.BodySize
			if respBody[i] == nil {
				respBody[i] = []byte{}
			}
			if len(resp.Header) > 0 {
				if respHeader[i], err = json.Marshal(resp.Header); err != nil {
					return nil, err
				}
			}
		}
		if r.progress != nil {
			if progress[i], err = json.Marshal(r.progress); err != nil {
				return nil, err
			}
		}
		if len(r.addLogs) > 0 {
			if addLog[i], err = json.Marshal(r.addLogs); err != nil {
				return nil, err
			}
		}
	}
	return []any{keys, statuses, attempts, retryBases, throttled, enqueuedAt, readyAt, startedAt, finishedAt,
		owners, leaseModes, lastErrors, events, deliveries, setResp, respStatus, respHeader, respBody, respSize,
		progress, addLog, ttl.Microseconds()}, nil
}

func (q *Queue) payloads(notices []queue.Notice) []string {
	var out []string
	for _, n := range notices {
		var kind byte
		switch n.Kind {
		case queue.TaskReady:
			kind = payloadReady
		case queue.StopRequested:
			kind = payloadStop
		case queue.DeliveryReady:
			kind = payloadDelivery
		default:
			continue
		}
		out = append(out, string(kind)+q.ownerHex+n.ID)
	}
	return out
}
