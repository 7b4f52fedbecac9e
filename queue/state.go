package queue

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/internal/wire"
	"github.com/offload-go/offload/task"
)

// The state record. It is rewritten on every status change by the single
// committer goroutine, so it is binary rather than JSON, which cost a third
// of that goroutine's CPU. Its first byte is stateVersion; a record whose
// first byte is '{' is the JSON of earlier versions, still read.
//
//	version(1) status attempts retryBase throttled
//	enqueuedAt startedAt finishedAt readyAt lastError
//	count{time status attempt detail}                     events
//	0 | 1 statusCode header body bodySize                  response
//	count{destination status tries lastError updatedAt}   deliveries
//	0 | 1 percent(8, float64 bits) message updatedAt       progress
//	count{time level message attempt}                      logs
//	sealedResponse
//
// Ints are varints, strings and byte fields are length-prefixed, a status
// is its statusByte (or 0 and the string, for one that has none), a time
// is encoded by appendTime.
const stateVersion = 1

// encodeState returns the state record of s. It encodes into a buffer on
// the stack, which holds a typical state, and returns an exact-size copy:
// one allocation, and bbolt may keep the value until the commit.
func encodeState(s *state) []byte {
	var scratch [512]byte
	return bytes.Clone(appendState(scratch[:0], s))
}

func appendState(dst []byte, s *state) []byte {
	dst = append(dst, stateVersion)
	dst = appendStatus(dst, s.Status)
	dst = binary.AppendVarint(dst, int64(s.Attempts))
	dst = binary.AppendVarint(dst, int64(s.RetryBase))
	dst = binary.AppendVarint(dst, int64(s.Throttled))
	for _, t := range [...]time.Time{s.EnqueuedAt, s.StartedAt, s.FinishedAt, s.ReadyAt} {
		dst = appendTime(dst, t)
	}
	dst = wire.AppendString(dst, s.LastError)

	dst = wire.AppendList(dst, s.Events, func(dst []byte, e *task.Event) []byte {
		dst = appendStatus(appendTime(dst, e.Time), e.Status)
		dst = binary.AppendVarint(dst, int64(e.Attempt))
		return wire.AppendString(dst, e.Detail)
	})

	if r := s.Response; r == nil {
		dst = append(dst, 0)
	} else {
		dst = append(dst, 1)
		dst = binary.AppendVarint(dst, int64(r.StatusCode))
		dst = wire.AppendHeader(dst, r.Header)
		dst = wire.AppendString(dst, r.Body)
		dst = binary.AppendVarint(dst, r.BodySize)
	}

	dst = wire.AppendList(dst, s.Deliveries, func(dst []byte, dl *task.Delivery) []byte {
		dst = wire.AppendString(wire.AppendString(dst, dl.Destination), dl.Status)
		dst = binary.AppendVarint(dst, int64(dl.Tries))
		return appendTime(wire.AppendString(dst, dl.LastError), dl.UpdatedAt)
	})

	if p := s.Progress; p == nil {
		dst = append(dst, 0)
	} else {
		dst = append(dst, 1)
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(p.Percent))
		dst = wire.AppendString(dst, p.Message)
		dst = appendTime(dst, p.UpdatedAt)
	}

	dst = wire.AppendList(dst, s.Logs, func(dst []byte, l *task.LogRecord) []byte {
		dst = wire.AppendString(wire.AppendString(appendTime(dst, l.Time), l.Level), l.Message)
		return binary.AppendVarint(dst, int64(l.Attempt))
	})

	return wire.AppendString(dst, s.SealedResponse)
}

// decodeState decodes a state record, binary or JSON. The result shares no
// memory with b, which bbolt owns. Errors wrap reqcodec.ErrCorrupt.
func decodeState(b []byte) (*state, error) {
	if len(b) > 0 && b[0] == '{' {
		s := &state{}
		if err := json.Unmarshal(b, s); err != nil {
			return nil, fmt.Errorf("%w: %v", reqcodec.ErrCorrupt, err)
		}
		return s, nil
	}
	d := wire.NewDecoder(b)
	if v := d.Byte(); d.Err() == nil && v != stateVersion {
		return nil, fmt.Errorf("%w: unknown state record version %d", reqcodec.ErrCorrupt, v)
	}
	s := &state{}
	s.Status = readStatus(&d)
	s.Attempts = int(d.Varint())
	s.RetryBase = int(d.Varint())
	s.Throttled = int(d.Varint())
	for _, t := range [...]*time.Time{&s.EnqueuedAt, &s.StartedAt, &s.FinishedAt, &s.ReadyAt} {
		*t = readTime(&d)
	}
	s.LastError = d.String()

	// time, status, attempt, detail: a byte each at least; room for the
	// event the status change that decodes a state adds.
	if n := d.Count(4); n > 0 {
		s.Events = make([]task.Event, n, n+1)
	}
	for i := range s.Events {
		e := &s.Events[i]
		e.Time, e.Status = readTime(&d), readStatus(&d)
		e.Attempt, e.Detail = int(d.Varint()), d.String()
	}

	if readPresent(&d) {
		r := &task.Response{StatusCode: int(d.Varint()), Header: d.Header()}
		r.Body = cloneBytes(d.Bytes())
		r.BodySize = d.Varint()
		s.Response = r
	}

	s.Deliveries = wire.MakeList[task.Delivery](&d, 5)
	for i := range s.Deliveries {
		dl := &s.Deliveries[i]
		dl.Destination = intern(d.Bytes(), task.OnSuccess, task.OnFailure)
		dl.Status = intern(d.Bytes(), task.DeliveryPending, task.DeliveryDelivered, task.DeliveryFailed, task.DeliverySuperseded)
		dl.Tries, dl.LastError, dl.UpdatedAt = int(d.Varint()), d.String(), readTime(&d)
	}

	if readPresent(&d) {
		p := &task.Progress{Percent: math.Float64frombits(d.Uint64())}
		p.Message = d.String()
		p.UpdatedAt = readTime(&d)
		s.Progress = p
	}

	s.Logs = wire.MakeList[task.LogRecord](&d, 4)
	for i := range s.Logs {
		l := &s.Logs[i]
		l.Time = readTime(&d)
		l.Level = intern(d.Bytes(), "DEBUG", "INFO", "WARN", "ERROR")
		l.Message, l.Attempt = d.String(), int(d.Varint())
	}

	s.SealedResponse = cloneBytes(d.Bytes())
	if err := d.End(); err != nil {
		return nil, fmt.Errorf("%w: state record: %w", reqcodec.ErrCorrupt, err)
	}
	return s, nil
}

// appendStatus appends s's statusByte. A status without one (which only a
// JSON record could hold) is 0 and the string, so that re-encoding an old
// record cannot panic and every value round-trips.
func appendStatus(dst []byte, s task.Status) []byte {
	if b, ok := statusCode(s); ok {
		return append(dst, b)
	}
	return wire.AppendString(append(dst, 0), s)
}

func readStatus(d *wire.Decoder) task.Status {
	b := d.Byte()
	if b == 0 {
		return task.Status(d.String())
	}
	s, ok := statusOf(b)
	if !ok {
		d.Fail(fmt.Errorf("unknown status %d", b))
	}
	return s
}

// appendTime appends t's UnixNano, zigzag-encoded as binary.AppendVarint
// does, plus one, so that 0 stands for the zero time.Time (whose UnixNano is
// undefined). The one nanosecond this pushes out of range, the first of
// int64 nanoseconds (in 1677), reads back as the zero time too.
func appendTime(dst []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(dst, 0)
	}
	ns := t.UnixNano()
	return binary.AppendUvarint(dst, (uint64(ns)<<1^uint64(ns>>63))+1)
}

// readTime reads what appendTime wrote, in UTC as decodeMeta reads times.
func readTime(d *wire.Decoder) time.Time {
	u := d.Uvarint()
	if u == 0 {
		return time.Time{}
	}
	u--
	return time.Unix(0, int64(u>>1)^-int64(u&1)).UTC()
}

var errPresence = errors.New("bad presence byte")

// readPresent reads the byte before an optional part: 1 if it follows.
func readPresent(d *wire.Decoder) bool {
	switch d.Byte() {
	case 0:
		return false
	case 1:
		return true
	}
	d.Fail(errPresence)
	return false
}

// intern returns the one of known that b spells, which needs no allocation,
// or else a copy of b.
func intern[T ~string](b []byte, known ...T) T {
	for _, k := range known {
		if string(b) == string(k) {
			return k
		}
	}
	return T(b)
}

func cloneBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return bytes.Clone(b)
}
