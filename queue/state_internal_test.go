package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"math/rand"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"testing/quick"
	"time"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/task"
)

// finishedState is a typical finished task's state: three events and a
// response with two headers and a 100-byte body.
func finishedState() *state {
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 123456789, time.UTC)
	return &state{
		Status:     task.Succeeded,
		Attempts:   1,
		EnqueuedAt: t0,
		StartedAt:  t0.Add(3 * time.Millisecond),
		FinishedAt: t0.Add(45 * time.Millisecond),
		Events: []task.Event{
			{Time: t0, Status: task.Enqueued},
			{Time: t0.Add(3 * time.Millisecond), Status: task.Running, Attempt: 1},
			{Time: t0.Add(45 * time.Millisecond), Status: task.Succeeded, Attempt: 1, Detail: "HTTP 200"},
		},
		Response: &task.Response{
			StatusCode: http.StatusOK,
			Header:     http.Header{"Content-Type": {"application/json"}, "X-Request-Id": {"01JNKZ3W6E9Q4R8T2V5X7Y0ABC"}},
			Body:       bytes.Repeat([]byte("0123456789"), 10),
			BodySize:   100,
		},
	}
}

// fullState sets every field, with values at the edges of their encoding.
func fullState() *state {
	s := finishedState()
	s.Status = task.Retrying
	s.Attempts, s.RetryBase, s.Throttled = math.MaxInt64, -1, 7
	s.ReadyAt = time.Unix(0, math.MaxInt64).UTC()
	s.StartedAt = time.Unix(0, math.MinInt64+1).UTC()
	s.LastError = "HTTP 503: \x00\xff"
	s.Events = append(s.Events, task.Event{Status: "NotAStatus", Detail: "zero time"}, task.Event{Time: time.Unix(0, 0).UTC()})
	s.Response.Header["Empty"] = []string{}
	s.Response.BodySize = 1 << 40
	s.Deliveries = []task.Delivery{
		{Destination: task.OnSuccess, Status: task.DeliveryPending, UpdatedAt: s.FinishedAt},
		{Destination: "other", Status: "odd", Tries: 3, LastError: "refused", UpdatedAt: time.Unix(-1, 0).UTC()},
	}
	s.Progress = &task.Progress{Percent: math.Copysign(0, -1), Message: "half", UpdatedAt: s.StartedAt}
	s.Logs = []task.LogRecord{
		{Time: s.StartedAt, Level: "INFO", Message: "started", Attempt: 1},
		{Level: "LEVEL+2", Message: strings.Repeat("x", 300)},
	}
	s.SealedResponse = []byte{0, 1, 2, 0xff}
	return s
}

// normalState is s as the codec promises to keep it: an empty slice, map
// or body may come back nil.
func normalState(s *state) *state {
	c := *s
	if len(c.Events) == 0 {
		c.Events = nil
	}
	if len(c.Deliveries) == 0 {
		c.Deliveries = nil
	}
	if len(c.Logs) == 0 {
		c.Logs = nil
	}
	if len(c.SealedResponse) == 0 {
		c.SealedResponse = nil
	}
	if r := c.Response; r != nil {
		rc := *r
		if len(rc.Header) == 0 {
			rc.Header = nil
		} else {
			rc.Header = http.Header{}
			for k, vs := range r.Header {
				rc.Header[k] = append([]string{}, vs...)
			}
		}
		if len(rc.Body) == 0 {
			rc.Body = nil
		}
		c.Response = &rc
	}
	return &c
}

func stateEqual(a, b *state) bool {
	// Percent is compared by its bits: -0 and NaN must survive too.
	pa, pb := a.Progress, b.Progress
	if (pa == nil) != (pb == nil) || pa != nil && math.Float64bits(pa.Percent) != math.Float64bits(pb.Percent) {
		return false
	}
	na, nb := normalState(a), normalState(b)
	if pa != nil {
		na.Progress, nb.Progress = &task.Progress{Message: pa.Message, UpdatedAt: pa.UpdatedAt}, &task.Progress{Message: pb.Message, UpdatedAt: pb.UpdatedAt}
	}
	return reflect.DeepEqual(na, nb)
}

func TestStateRoundTrip(t *testing.T) {
	t.Parallel()
	nan := fullState()
	nan.Progress.Percent = math.Float64frombits(0x7ff8000000000abc)
	for _, s := range []*state{{}, finishedState(), fullState(), nan, initialState(&jobMeta{})} {
		b := encodeState(s)
		if b[0] != stateVersion {
			t.Fatalf("record starts with %#x", b[0])
		}
		got, err := decodeState(b)
		if err != nil {
			t.Fatalf("decodeState(encodeState(%+v)): %v", s, err)
		}
		if !stateEqual(got, s) {
			t.Errorf("round trip:\n got  %+v\n want %+v", got, s)
		}
	}
}

// TestStateTimes: every time comes back equal and in UTC, whatever zone
// it was written in, and the zero time stays zero.
func TestStateTimes(t *testing.T) {
	t.Parallel()
	zone := time.FixedZone("X", 5*3600+30*60)
	for _, tm := range []time.Time{
		{}, time.Unix(0, 0), time.Unix(0, -1), time.Unix(0, 1), time.Unix(0, math.MinInt64+1),
		time.Unix(0, math.MaxInt64), time.Date(2026, 3, 1, 10, 0, 0, 1, zone), time.Now(),
	} {
		got, err := decodeState(encodeState(&state{EnqueuedAt: tm}))
		if err != nil {
			t.Fatal(err)
		}
		if e := got.EnqueuedAt; !e.Equal(tm) || e.IsZero() != tm.IsZero() || e.Location() != time.UTC {
			t.Errorf("time %v came back as %v (%v)", tm, e, e.Location())
		}
	}
}

func TestStateRoundTripProperty(t *testing.T) {
	t.Parallel()
	cfg := &quick.Config{
		MaxCount: 1000,
		Values: func(args []reflect.Value, r *rand.Rand) {
			args[0] = reflect.ValueOf(randomState(r))
		},
	}
	prop := func(s *state) bool {
		got, err := decodeState(encodeState(s))
		return err == nil && stateEqual(got, s)
	}
	if err := quick.Check(prop, cfg); err != nil {
		t.Error(err)
	}
}

// randomState makes a state whose every field may be empty, nil, long,
// binary or out of the usual range.
func randomState(r *rand.Rand) *state {
	str := func() string {
		b := make([]byte, r.Intn(3)*r.Intn(40))
		r.Read(b)
		return string(b)
	}
	tm := func() time.Time {
		if r.Intn(4) == 0 {
			return time.Time{}
		}
		return time.Unix(0, r.Int63()-r.Int63()).UTC()
	}
	status := func() task.Status {
		if r.Intn(10) == 0 {
			return task.Status(str())
		}
		return task.Statuses[r.Intn(len(task.Statuses))]
	}
	n := func() int { return int(r.Int63() - r.Int63()) }
	s := &state{
		Status: status(), Attempts: n(), RetryBase: n(), Throttled: n(),
		EnqueuedAt: tm(), StartedAt: tm(), FinishedAt: tm(), ReadyAt: tm(), LastError: str(),
	}
	for range r.Intn(4) {
		s.Events = append(s.Events, task.Event{Time: tm(), Status: status(), Attempt: n(), Detail: str()})
	}
	if r.Intn(2) == 0 {
		s.Response = &task.Response{StatusCode: n(), BodySize: r.Int63() - r.Int63()}
		if k := r.Intn(3); k > 0 {
			s.Response.Header = http.Header{}
			for range k {
				vs := make([]string, r.Intn(3))
				for i := range vs {
					vs[i] = str()
				}
				s.Response.Header[str()] = vs
			}
		}
		s.Response.Body = []byte(str())
	}
	for range r.Intn(3) {
		s.Deliveries = append(s.Deliveries, task.Delivery{
			Destination: str(), Status: task.DeliveryStatus(str()), Tries: n(), LastError: str(), UpdatedAt: tm(),
		})
	}
	if r.Intn(2) == 0 {
		s.Progress = &task.Progress{Percent: math.Float64frombits(r.Uint64()), Message: str(), UpdatedAt: tm()}
	}
	for range r.Intn(3) {
		s.Logs = append(s.Logs, task.LogRecord{Time: tm(), Level: str(), Message: str(), Attempt: n()})
	}
	s.SealedResponse = []byte(str())
	return s
}

// TestStateDecodeCopies: the result shares no memory with the record,
// which bbolt owns only for the transaction.
func TestStateDecodeCopies(t *testing.T) {
	t.Parallel()
	b := encodeState(fullState())
	got, err := decodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0xAA
	}
	if !stateEqual(got, fullState()) {
		t.Errorf("decoded state changed with its record: %+v", got)
	}
}

func TestStateDecodeTruncated(t *testing.T) {
	t.Parallel()
	for _, s := range []*state{fullState(), {}} {
		b := encodeState(s)
		for n := range len(b) {
			if _, err := decodeState(b[:n]); !errors.Is(err, reqcodec.ErrCorrupt) {
				t.Fatalf("decodeState of %d of %d bytes: err = %v, want ErrCorrupt", n, len(b), err)
			}
		}
	}
}

func TestStateDecodeGarbage(t *testing.T) {
	t.Parallel()
	valid := encodeState(fullState())
	// The empty state: the version; status "", which has no statusByte,
	// as 0 and an empty string; then three ints (bytes 3-5), four zero
	// times (6-9), an empty error (10), no events (11), no response (12),
	// no deliveries (13), no progress (14), no logs (15), no sealed
	// response (16).
	empty := encodeState(&state{})
	if want := append([]byte{stateVersion}, make([]byte, 16)...); !bytes.Equal(empty, want) {
		t.Fatalf("empty state encodes as %x, want %x", empty, want)
	}
	// at is empty with v written over it from byte i.
	at := func(i int, v ...byte) []byte {
		b := append(bytes.Clone(empty[:i]), v...)
		if i+len(v) < len(empty) {
			b = append(b, empty[i+len(v):]...)
		}
		return b
	}
	for _, c := range []struct {
		name string
		b    []byte
	}{
		{"nil", nil},
		{"version 0", append([]byte{0}, valid[1:]...)},
		{"version 2", append([]byte{2}, valid[1:]...)},
		{"bad JSON", []byte(`{"status":`)},
		{"trailing byte", append(bytes.Clone(valid), 0)},
		{"unknown status", at(1, byte(len(task.Statuses)+1))},
		{"event count beyond the input", at(11, 0xff, 0xff, 0xff, 0x7f)},
		{"presence byte 2", at(12, 2)},
		{"huge string length", at(10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)},
		{"overlong varint", at(3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)},
		{"all 0xff", bytes.Repeat([]byte{0xff}, 64)},
		{"all 0x01", bytes.Repeat([]byte{0x01}, 64)},
	} {
		if _, err := decodeState(c.b); !errors.Is(err, reqcodec.ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", c.name, err)
		}
	}
}

func FuzzState(f *testing.F) {
	f.Add(encodeState(finishedState()))
	f.Add(encodeState(fullState()))
	f.Add(encodeState(&state{}))
	f.Add([]byte{})
	f.Add([]byte{stateVersion})
	f.Add([]byte(`{"status":"Enqueued","events":[{"status":"Enqueued"}]}`))
	r := rand.New(rand.NewSource(1))
	for range 8 {
		f.Add(encodeState(randomState(r)))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeState(b)
		if err != nil {
			if s != nil {
				t.Fatalf("decodeState returned a state and an error: %v", err)
			}
			if !errors.Is(err, reqcodec.ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			return
		}
		again, err := decodeState(encodeState(s))
		if err != nil {
			t.Fatalf("re-encoding of a decoded state does not decode: %v", err)
		}
		// A JSON record may hold times in other zones, or beyond the
		// nanoseconds of an int64, which the binary format keeps in UTC or
		// not at all; from its first re-encoding on, the state is stable.
		want := s
		if b[0] == '{' {
			want = again
			if again, err = decodeState(encodeState(again)); err != nil {
				t.Fatalf("second re-encoding does not decode: %v", err)
			}
		}
		if !stateEqual(again, want) {
			t.Fatalf("re-encoded state differs:\n got  %+v\n want %+v", again, want)
		}
	})
}

// BenchmarkStateCodec compares the state record's binary codec with the
// JSON it replaced, on a typical finished task: compare each json run's
// ns/op with its binary twin's.
//
//	go test ./queue -run '^$' -bench BenchmarkStateCodec -benchmem
func BenchmarkStateCodec(b *testing.B) {
	s := finishedState()
	bin := encodeState(s)
	js, err := json.Marshal(s)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		size int
		run  func() error
	}{
		{"encode/binary", len(bin), func() error { encodeState(s); return nil }},
		{"encode/json", len(js), func() error { _, err := json.Marshal(s); return err }},
		{"decode/binary", len(bin), func() error { _, err := decodeState(bin); return err }},
		{"decode/json", len(js), func() error { _, err := decodeState(js); return err }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(c.size))
			for b.Loop() {
				if err := c.run(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
