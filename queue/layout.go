package queue

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/internal/wire"
	"github.com/offload-go/offload/task"
)

// Top-level buckets. Keys called key16 are a task's 16-byte ULID.
var (
	bMeta   = []byte("meta")   // "magic" -> formatMagic
	bTasks  = []byte("tasks")  // key16 -> job record (immutable)
	bState  = []byte("state")  // key16 -> state record (see state.go); absent until the first change
	bIDs    = []byte("ids")    // caller-chosen ID -> key16
	bReady  = []byte("ready")  // target/ -> readyNs(8) key16 -> nil
	bIndex  = []byte("index")  // target/ -> statusByte key16 -> nil
	bCounts = []byte("counts") // target 0x00 statusByte -> uint64
	bDone   = []byte("done")   // finishedNs(8) key16 -> nil, for retention
	bIdem   = []byte("idem")   // target 0x00 idempotency key -> fingerprint(32) key16
	bBlobs  = []byte("blobs")  // blob name -> key16

	topBuckets = [][]byte{bMeta, bTasks, bState, bIDs, bReady, bIndex, bCounts, bDone, bIdem, bBlobs, bOutbox}

	magicKey    = []byte("magic")
	formatMagic = []byte("offload-queue/1")
)

// maxEvents bounds a task's history: the first event and the latest ones.
const maxEvents = 64

func statusByte(s task.Status) byte {
	if b, ok := statusCode(s); ok {
		return b
	}
	panic("queue: unknown status " + string(s)) // statuses come from task constants only
}

// statusCode is s's statusByte, or false for a string that is no status.
func statusCode(s task.Status) (byte, bool) {
	for i, st := range task.Statuses {
		if st == s {
			return byte(i + 1), true
		}
	}
	return 0, false
}

func statusOf(b byte) (task.Status, bool) {
	if b == 0 || int(b) > len(task.Statuses) {
		return "", false
	}
	return task.Statuses[b-1], true
}

func waiting(s task.Status) bool { return s == task.Enqueued || s == task.Retrying }

func unfinished(s task.Status) bool { return !s.Terminal() }

func timeKey(t time.Time, key []byte) []byte {
	k := make([]byte, 8, 8+len(key))
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	return append(k, key...)
}

func statusKey(s task.Status, key []byte) []byte {
	return append([]byte{statusByte(s)}, key...)
}

func countKey(target string, s task.Status) []byte {
	return append(append([]byte(target), 0), statusByte(s))
}

func idemKey(target, key string) []byte {
	return append(append([]byte(target), 0), key...)
}

// jobMeta is the head of a job record: what the queue itself needs.
type jobMeta struct {
	callerID string
	target   string
	created  time.Time
	readyAt  time.Time
	idemKey  string
	// sealed: the record is a sealedRecordVersion one, whose request is
	// sealed (see seal.go); what decodeMeta returns after its head is then
	// the blob name and the sealed request, not an encoded request.
	sealed bool
}

const recordVersion = 1

func appendRecord(dst []byte, m *jobMeta, req *reqcodec.Request) []byte {
	return reqcodec.Append(appendHead(dst, recordVersion, m), req)
}

// appendHead appends a job record's head: its version and the meta.
func appendHead(dst []byte, version byte, m *jobMeta) []byte {
	dst = append(dst, version)
	dst = wire.AppendString(dst, m.callerID)
	dst = wire.AppendString(dst, m.target)
	dst = binary.AppendVarint(dst, m.created.UnixNano())
	dst = binary.AppendVarint(dst, m.readyAt.UnixNano())
	return wire.AppendString(dst, m.idemKey)
}

// recordSize bounds the length of appendRecord's output (the version, three
// strings with their lengths, two times), so that a record is allocated once.
func recordSize(m *jobMeta, req *reqcodec.Request) int {
	return 1 + 5*binary.MaxVarintLen64 + len(m.callerID) + len(m.target) + len(m.idemKey) + reqcodec.Size(req)
}

// decodeMeta decodes a job record's head and returns the encoded request
// that follows it (sharing b's memory); for a sealed record (m.sealed),
// what follows is the blob name and the sealed request (see openRequest).
func decodeMeta(b []byte) (*jobMeta, []byte, error) {
	if len(b) == 0 || (b[0] != recordVersion && b[0] != sealedRecordVersion) {
		return nil, nil, fmt.Errorf("%w: unknown job record version", reqcodec.ErrCorrupt)
	}
	m := &jobMeta{sealed: b[0] == sealedRecordVersion}
	d := wire.NewDecoder(b[1:])
	m.callerID = d.String()
	m.target = d.String()
	created, ready := d.Varint(), d.Varint()
	m.idemKey = d.String()
	if d.Err() != nil {
		return nil, nil, errTruncated
	}
	m.created, m.readyAt = time.Unix(0, created).UTC(), time.Unix(0, ready).UTC()
	return m, d.Rest(), nil
}

var errTruncated = fmt.Errorf("%w: truncated job record", reqcodec.ErrCorrupt)

// state is a task's mutable part. Its record is binary (see appendState);
// the JSON tags are the format of records written before that, which
// decodeState still reads.
type state struct {
	Status     task.Status      `json:"status"`
	Attempts   int              `json:"attempts,omitempty"`
	RetryBase  int              `json:"retryBase,omitempty"`
	Throttled  int              `json:"throttled,omitempty"` // attempts answered 429/503 since RetryBase
	EnqueuedAt time.Time        `json:"enqueuedAt"`
	StartedAt  time.Time        `json:"startedAt,omitzero"`
	FinishedAt time.Time        `json:"finishedAt,omitzero"`
	ReadyAt    time.Time        `json:"readyAt,omitzero"`
	LastError  string           `json:"lastError,omitempty"`
	Events     []task.Event     `json:"events,omitempty"`
	Response   *task.Response   `json:"response,omitempty"`
	Deliveries []task.Delivery  `json:"deliveries,omitempty"`
	Progress   *task.Progress   `json:"progress,omitempty"`
	Logs       []task.LogRecord `json:"logs,omitempty"`

	// SealedResponse replaces Response when the queue has a Sealer: the
	// sealed JSON of the response (see sealResponse).
	SealedResponse []byte `json:"sealedResponse,omitempty"`
}

// initialState is the state of a task that has not changed since enqueue,
// which is stored as no state record at all.
func initialState(m *jobMeta) *state {
	return &state{
		Status:     task.Enqueued,
		EnqueuedAt: m.created,
		ReadyAt:    m.readyAt,
		Events:     append(make([]task.Event, 0, 2), task.Event{Time: m.created, Status: task.Enqueued}), // room for the lease's
	}
}

func (s *state) addEvent(e task.Event) {
	if len(s.Events) >= maxEvents {
		s.Events = append(s.Events[:1], s.Events[len(s.Events)-maxEvents+2:]...)
	}
	s.Events = append(s.Events, e)
}

func loadState(tx *bolt.Tx, key []byte, m *jobMeta) (*state, error) {
	return stateOf(key, m, tx.Bucket(bState).Get(key))
}

// stateOf decodes v, the state record of the task stored under key, or
// returns its initial state when it has none.
func stateOf(key []byte, m *jobMeta, v []byte) (*state, error) {
	if v == nil {
		return initialState(m), nil
	}
	s, err := decodeState(v)
	if err != nil {
		return nil, fmt.Errorf("state of %s: %w", ulidString(key), err)
	}
	return s, nil
}

func ulidString(key []byte) string {
	var id ulid.ULID
	copy(id[:], key)
	return id.String()
}

// taskID is the public ID of the task stored under key.
func taskID(key []byte, m *jobMeta) string {
	if m.callerID != "" {
		return m.callerID
	}
	return ulidString(key)
}

// resolve finds the key16 of a task ID, or nil. A generated ID may be in
// either case; the key of a task its caller named is not one of its IDs.
func resolve(tx *bolt.Tx, id string) []byte {
	if task.IsGenerated(id) {
		u, err := ulid.ParseStrict(id)
		if err != nil {
			return nil
		}
		v := tx.Bucket(bTasks).Get(u[:])
		if v == nil {
			return nil
		}
		if m, _, err := decodeMeta(v); err == nil && m.callerID != "" {
			return nil // a damaged record is found, and its damage reported
		}
		return append([]byte(nil), u[:]...)
	}
	if k := tx.Bucket(bIDs).Get([]byte(id)); k != nil {
		return append([]byte(nil), k...)
	}
	return nil
}

func buildTask(key []byte, m *jobMeta, s *state, req *reqcodec.Request, withBody bool) *task.Task {
	t := &task.Task{
		ID:         taskID(key, m),
		Target:     m.target,
		Status:     s.Status,
		Attempts:   s.Attempts,
		RetryBase:  s.RetryBase,
		CreatedAt:  m.created,
		EnqueuedAt: s.EnqueuedAt,
		StartedAt:  s.StartedAt,
		FinishedAt: s.FinishedAt,
		LastError:  s.LastError,
		Events:     s.Events,
		Response:   s.Response,
		Deliveries: s.Deliveries,
		Progress:   s.Progress,
		Logs:       s.Logs,
	}
	if waiting(s.Status) {
		t.ReadyAt = s.ReadyAt
	}
	if req != nil {
		t.Request = task.Request{
			Method:     req.Method,
			URL:        req.RequestURI,
			Host:       req.Host,
			RemoteAddr: req.RemoteAddr,
			Header:     req.Header,
			BodySize:   req.BodySize,
		}
		if len(req.Values) > 0 {
			t.Request.Values = make(map[string]string, len(req.Values))
			for _, kv := range req.Values {
				t.Request.Values[kv.Key] = kv.Value
			}
		}
		if withBody {
			t.Request.Body = req.Body
		}
	}
	return t
}
