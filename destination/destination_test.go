package destination_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/destination/destinationtest"
	"github.com/offload-go/offload/task"
)

// collector is a Func destination that keeps what it receives.
type collector struct {
	mu   sync.Mutex
	recs []destination.Record
}

func (c *collector) dest() destination.Func {
	return func(ctx context.Context, rec destination.Record) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.recs = append(c.recs, rec)
		return nil
	}
}

func (c *collector) received() []destination.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.recs)
}

func TestFuncConformance(t *testing.T) {
	t.Parallel()
	destinationtest.Run(t, func(t *testing.T) (destination.Destination, func() []destination.Record) {
		c := &collector{}
		return c.dest(), c.received
	})
}

// Multi of two: each of them receives every record.
func TestMultiConformance(t *testing.T) {
	t.Parallel()
	destinationtest.Run(t, func(t *testing.T) (destination.Destination, func() []destination.Record) {
		a, b := &collector{}, &collector{}
		return destination.Multi(a.dest(), b.dest()), func() []destination.Record {
			ra, rb := a.received(), b.received()
			if !sameRecords(ra, rb) {
				t.Errorf("Multi's destinations received different records: %d and %d", len(ra), len(rb))
			}
			return ra
		}
	})
}

func sameRecords(a, b []destination.Record) bool {
	enc := func(rs []destination.Record) []string {
		var out []string
		for _, r := range rs {
			j, _ := json.Marshal(r)
			out = append(out, string(j))
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(enc(a), enc(b))
}

func TestMultiJoinsErrors(t *testing.T) {
	t.Parallel()
	errA, errC := errors.New("a down"), errors.New("c down")
	var calls []string
	mk := func(name string, err error) destination.Destination {
		return destination.Func(func(ctx context.Context, rec destination.Record) error {
			calls = append(calls, name)
			return err
		})
	}
	m := destination.Multi(mk("a", errA), mk("b", nil), mk("c", destination.Permanent(errC)))
	err := m.Deliver(context.Background(), destination.Record{})
	if !errors.Is(err, errA) || !errors.Is(err, errC) {
		t.Errorf("Multi error %v; want it to wrap both failures", err)
	}
	if destination.IsPermanent(err) {
		t.Errorf("Multi error %v is permanent; want a retry for the part that may recover", err)
	}
	err = destination.Multi(mk("b", nil), mk("c", destination.Permanent(errC))).Deliver(context.Background(), destination.Record{})
	if !destination.IsPermanent(err) || !errors.Is(err, errC) {
		t.Errorf("Multi error %v; want it permanent when every failure is", err)
	}
	if want := []string{"a", "b", "c", "b", "c"}; !slices.Equal(calls, want) {
		t.Errorf("Multi called %v; want %v (all, in order, despite the first failing)", calls, want)
	}
	if err := destination.Multi(mk("b", nil), mk("b", nil)).Deliver(context.Background(), destination.Record{}); err != nil {
		t.Errorf("Multi of successes: %v", err)
	}
	if err := destination.Multi().Deliver(context.Background(), destination.Record{}); err != nil {
		t.Errorf("empty Multi: %v", err)
	}
}

// IsPermanent looks through wrapping, and reads a joined error (a Multi,
// nested or wrapped) as permanent only when every part is.
func TestIsPermanent(t *testing.T) {
	t.Parallel()
	gone, down := destination.Permanent(errors.New("410 from a")), errors.New("503 from b")
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain", down, false},
		{"permanent", gone, true},
		{"wrapped permanent", fmt.Errorf("sink a: %w", gone), true},
		{"permanent wrapped twice", fmt.Errorf("x: %w", fmt.Errorf("y: %w", gone)), true},
		{"joined, one transient", errors.Join(fmt.Errorf("sink a: %w", gone), down), false},
		{"nested join, one transient", errors.Join(errors.Join(gone), down), false},
		{"wrapped join, one transient", fmt.Errorf("multi: %w", errors.Join(gone, down)), false},
		{"joined, all permanent", errors.Join(gone, fmt.Errorf("b: %w", errors.Join(gone))), true},
		{"two %w, one transient", fmt.Errorf("%w; %w", gone, down), false},
	} {
		if got := destination.IsPermanent(c.err); got != c.want {
			t.Errorf("%s: IsPermanent(%v) = %v; want %v", c.name, c.err, got, c.want)
		}
	}
}

func TestPermanent(t *testing.T) {
	t.Parallel()
	if err := destination.Permanent(nil); err != nil {
		t.Errorf("Permanent(nil) = %v; want nil", err)
	}
	base := errors.New("gone")
	err := destination.Permanent(base)
	var pe *destination.PermanentError
	if !errors.As(err, &pe) || pe.Err != base || !errors.Is(err, base) {
		t.Errorf("Permanent(%v) = %#v; want a *PermanentError wrapping it", base, err)
	}
	if got := err.Error(); got != "permanent: gone" {
		t.Errorf("Error() = %q", got)
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	if err := destination.RetryAfter(nil, time.Minute); err != nil {
		t.Errorf("RetryAfter(nil) = %v; want nil", err)
	}
	base := errors.New("busy")
	for _, tt := range []struct{ in, want time.Duration }{{time.Minute, time.Minute}, {-time.Minute, 0}} {
		err := destination.RetryAfter(base, tt.in)
		var ra *destination.RetryAfterError
		if !errors.As(err, &ra) || ra.After != tt.want || !errors.Is(err, base) || err.Error() != "busy" {
			t.Errorf("RetryAfter(%v, %s) = %#v; want a *RetryAfterError of %s wrapping it", base, tt.in, err, tt.want)
		}
	}
}

func TestConditionOf(t *testing.T) {
	t.Parallel()
	resp := func(code int) *task.Response { return &task.Response{StatusCode: code} }
	tests := []struct {
		status task.Status
		resp   *task.Response
		want   destination.Condition
		ok     bool
	}{
		{task.Succeeded, resp(200), destination.Success, true},
		{task.Failed, resp(500), destination.RetriesExhausted, true},
		{task.Failed, resp(502), destination.RetriesExhausted, true},
		{task.Failed, nil, destination.RetriesExhausted, true},
		{task.Failed, resp(400), destination.NonRetryableError, true},
		{task.Failed, resp(404), destination.NonRetryableError, true},
		{task.Failed, resp(499), destination.NonRetryableError, true},
		{task.Failed, resp(408), destination.RetriesExhausted, true},
		{task.Failed, resp(425), destination.RetriesExhausted, true},
		{task.Failed, resp(429), destination.RetriesExhausted, true},
		{task.Expired, nil, destination.EventAgeExceeded, true},
		{task.Expired, resp(503), destination.EventAgeExceeded, true},
		{task.Stopped, nil, destination.Stopped, true},
		{task.Invalid, nil, destination.Invalid, true},
		{task.Enqueued, nil, "", false},
		{task.Running, nil, "", false},
		{task.Retrying, resp(500), "", false},
		{task.Stopping, nil, "", false},
	}
	for _, tt := range tests {
		got, ok := destination.ConditionOf(&task.Task{Status: tt.status, Response: tt.resp})
		if got != tt.want || ok != tt.ok {
			code := 0
			if tt.resp != nil {
				code = tt.resp.StatusCode
			}
			t.Errorf("ConditionOf(%s, %d) = %q, %v; want %q, %v", tt.status, code, got, ok, tt.want, tt.ok)
		}
	}
}

var finished = time.Date(2026, 11, 25, 20, 15, 29, 535358910, time.UTC)

func TestNewRecord(t *testing.T) {
	t.Parallel()
	tk := &task.Task{
		ID: "01M8A5JMZP442HFYP7HK6MA4SD", Target: "transcode", Status: task.Succeeded, Attempts: 2,
		FinishedAt: finished, LastError: "left over from attempt 1",
		Request:  task.Request{Method: "POST", URL: "/t", Body: []byte(`{"in":"a.mp4"}`)},
		Response: &task.Response{StatusCode: 200, Body: []byte("done")},
	}
	got, err := json.Marshal(destination.NewRecord(tk, destination.Success))
	if err != nil {
		t.Fatal(err)
	}
	// The encoding documented on Record, field for field.
	want := `{"version":"1.0","timestamp":"2026-11-25T20:15:29.53535891Z",` +
		`"requestContext":{"requestId":"01M8A5JMZP442HFYP7HK6MA4SD","functionArn":"transcode","condition":"Success","approximateInvokeCount":2},` +
		`"requestPayload":"{\"in\":\"a.mp4\"}","responseContext":{"statusCode":200},"responsePayload":"done"}`
	if string(got) != want {
		t.Errorf("Success record:\n got %s\nwant %s", got, want)
	}

	tk.Status, tk.LastError = task.Failed, "handler answered 500 Internal Server Error (retries exhausted: 1)"
	tk.Request.Body = []byte{0xff, 0x00, 0xfe}
	tk.Response = &task.Response{StatusCode: 500, Body: []byte{0xc3, 0x28}}
	got, err = json.Marshal(destination.NewRecord(tk, destination.RetriesExhausted))
	if err != nil {
		t.Fatal(err)
	}
	want = `{"version":"1.0","timestamp":"2026-11-25T20:15:29.53535891Z",` +
		`"requestContext":{"requestId":"01M8A5JMZP442HFYP7HK6MA4SD","functionArn":"transcode","condition":"RetriesExhausted","approximateInvokeCount":2},` +
		`"requestPayload":"/wD+","requestPayloadEncoding":"base64",` +
		`"responseContext":{"statusCode":500,"functionError":"handler answered 500 Internal Server Error (retries exhausted: 1)"},` +
		`"responsePayload":"wyg=","responsePayloadEncoding":"base64"}`
	if string(got) != want {
		t.Errorf("failure record:\n got %s\nwant %s", got, want)
	}

	// A body kept in a blob file is left out, a response cut by the cap
	// is partial: the sizes say so. A whole body has no size field.
	tk.Status, tk.LastError = task.Succeeded, ""
	tk.Request = task.Request{BodySize: 100 << 20}
	tk.Response = &task.Response{StatusCode: 200, Body: []byte("12345678"), BodySize: 2 << 20}
	got, err = json.Marshal(destination.NewRecord(tk, destination.Success))
	if err != nil {
		t.Fatal(err)
	}
	want = `{"version":"1.0","timestamp":"2026-11-25T20:15:29.53535891Z",` +
		`"requestContext":{"requestId":"01M8A5JMZP442HFYP7HK6MA4SD","functionArn":"transcode","condition":"Success","approximateInvokeCount":2},` +
		`"requestPayload":"","requestPayloadSize":104857600,` +
		`"responseContext":{"statusCode":200},"responsePayload":"12345678","responsePayloadSize":2097152}`
	if string(got) != want {
		t.Errorf("record with partial payloads:\n got %s\nwant %s", got, want)
	}
	tk.Request, tk.Response = task.Request{Body: []byte("whole"), BodySize: 5}, &task.Response{StatusCode: 200, Body: []byte("whole"), BodySize: 5}
	if rec := destination.NewRecord(tk, destination.Success); rec.RequestPayloadSize != 0 || rec.ResponsePayloadSize != 0 {
		t.Errorf("record of whole payloads has sizes %d and %d; want none", rec.RequestPayloadSize, rec.ResponsePayloadSize)
	}

	// No attempt ran: no response context at all.
	tk = &task.Task{ID: "x", Target: "t", Status: task.Stopped, FinishedAt: finished, LastError: ""}
	rec := destination.NewRecord(tk, destination.Stopped)
	if rec.ResponseContext != (destination.ResponseContext{}) || rec.ResponsePayload != "" || rec.RequestPayload != "" ||
		rec.RequestContext.ApproximateInvokeCount != 0 {
		t.Errorf("record of a task never run: %+v", rec)
	}
	got, _ = json.Marshal(rec)
	if !bytes.Contains(got, []byte(`"responseContext":{}`)) {
		t.Errorf("record of a task never run encodes as %s", got)
	}
}

// A payload survives the trip through JSON whatever its bytes: text as
// text, anything else as base64 that decodes back to it.
func TestNewRecordPayloadRoundTrip(t *testing.T) {
	t.Parallel()
	bodies := [][]byte{
		nil, []byte(""), []byte("plain"), []byte("héllo 世界 🚀"), []byte("a\x00b\n\"<>&"),
		{0xff}, {0xc3, 0x28}, {0xed, 0xa0, 0x80}, bytes.Repeat([]byte{0x80}, 1000),
	}
	for _, body := range bodies {
		tk := &task.Task{Status: task.Succeeded, Request: task.Request{Body: body}, Response: &task.Response{StatusCode: 200, Body: body}}
		j, err := json.Marshal(destination.NewRecord(tk, destination.Success))
		if err != nil {
			t.Fatal(err)
		}
		var rec destination.Record
		if err := json.Unmarshal(j, &rec); err != nil {
			t.Fatal(err)
		}
		for _, p := range []struct{ payload, enc string }{
			{rec.RequestPayload, rec.RequestPayloadEncoding},
			{rec.ResponsePayload, rec.ResponsePayloadEncoding},
		} {
			got := []byte(p.payload)
			if p.enc == "base64" {
				if got, err = base64.StdEncoding.DecodeString(p.payload); err != nil {
					t.Fatal(err)
				}
			} else if p.enc != "" {
				t.Fatalf("encoding %q", p.enc)
			}
			if !bytes.Equal(got, body) {
				t.Errorf("payload %q (encoding %q) does not give back %x", p.payload, p.enc, body)
			}
		}
	}
}

func TestLog(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	d := destination.Log(slog.New(slog.NewJSONHandler(&buf, nil)))
	ok := destination.Record{RequestContext: destination.RequestContext{
		RequestID: "id1", FunctionArn: "work", Condition: destination.Success, ApproximateInvokeCount: 1,
	}, ResponseContext: destination.ResponseContext{StatusCode: 200}}
	bad := destination.Record{RequestContext: destination.RequestContext{
		RequestID: "id2", FunctionArn: "work", Condition: destination.RetriesExhausted, ApproximateInvokeCount: 4,
	}, ResponseContext: destination.ResponseContext{StatusCode: 500, FunctionError: "boom"}}
	for _, r := range []destination.Record{ok, bad} {
		if err := d.Deliver(context.Background(), r); err != nil {
			t.Fatalf("Log: %v", err)
		}
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("Log wrote %d lines; want 2:\n%s", len(lines), buf.String())
	}
	want := []map[string]any{
		{"level": "INFO", "id": "id1", "target": "work", "condition": "Success", "invocations": 1.0, "status": 200.0, "error": ""},
		{"level": "WARN", "id": "id2", "target": "work", "condition": "RetriesExhausted", "invocations": 4.0, "status": 500.0, "error": "boom"},
	}
	for i, line := range lines {
		var got map[string]any
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatal(err)
		}
		for k, v := range want[i] {
			if got[k] != v {
				t.Errorf("line %d: %s = %v; want %v", i+1, k, got[k], v)
			}
		}
	}
}

// fakeSubmitter is a function-field fake of the scheduler's Submit.
type fakeSubmitter struct {
	SubmitFunc func(ctx context.Context, target string, r *http.Request) (string, error)
}

func (f *fakeSubmitter) Submit(ctx context.Context, target string, r *http.Request) (string, error) {
	return f.SubmitFunc(ctx, target, r)
}

var _ destination.Submitter = (*fakeSubmitter)(nil)

func TestTargetRequest(t *testing.T) {
	t.Parallel()
	var gotTarget string
	var got *http.Request
	var body []byte
	s := &fakeSubmitter{SubmitFunc: func(ctx context.Context, target string, r *http.Request) (string, error) {
		gotTarget, got = target, r
		var err error
		body, err = io.ReadAll(r.Body)
		return "follow-up", err
	}}
	rec := destination.Record{Version: destination.Version, Timestamp: finished, RequestContext: destination.RequestContext{
		RequestID: "01M8A5JMZP442HFYP7HK6MA4SD", FunctionArn: "first", Condition: destination.RetriesExhausted, ApproximateInvokeCount: 4,
	}}
	if err := destination.Target(s, "second").Deliver(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	if gotTarget != "second" || got.Method != http.MethodPost {
		t.Errorf("Submit(%q) with %s; want second with POST", gotTarget, got.Method)
	}
	for k, v := range map[string]string{
		"Content-Type":              "application/json",
		"Idempotency-Key":           "destination:01M8A5JMZP442HFYP7HK6MA4SD:RetriesExhausted:" + strconv.FormatInt(finished.UnixNano(), 10),
		destination.HeaderRequestID: "01M8A5JMZP442HFYP7HK6MA4SD",
		destination.HeaderCondition: "RetriesExhausted",
	} {
		if got.Header.Get(k) != v {
			t.Errorf("header %s = %q; want %q", k, got.Header.Get(k), v)
		}
	}
	want, _ := json.Marshal(rec)
	if !bytes.Equal(body, want) {
		t.Errorf("body %s; want the record's JSON %s", body, want)
	}

	// The submitter's error is the delivery's.
	errFull := errors.New("queue full")
	s.SubmitFunc = func(ctx context.Context, target string, r *http.Request) (string, error) { return "", errFull }
	if err := destination.Target(s, "second").Deliver(context.Background(), rec); !errors.Is(err, errFull) {
		t.Errorf("Deliver = %v; want the Submit error", err)
	}
}

// Log(nil) writes to slog.Default() rather than panic in the delivery
// goroutine.
func TestLogNil(t *testing.T) {
	t.Parallel()
	rec := destination.Record{RequestContext: destination.RequestContext{RequestID: "x", Condition: destination.Success}}
	if err := destination.Log(nil).Deliver(context.Background(), rec); err != nil {
		t.Errorf("Log(nil).Deliver = %v", err)
	}
}
