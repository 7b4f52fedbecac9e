// Package destinationtest checks that a [destination.Destination] keeps the
// contract that offload's scheduler relies on, in the manner of
// testing/slogtest and riverdrivertest: run [Run] from a test of your own
// destination, giving it a constructor that also reports what the sink
// received.
//
//	func TestMySink(t *testing.T) {
//		destinationtest.Run(t, func(t *testing.T) (destination.Destination, func() []destination.Record) {
//			sink := newFakeSink(t)
//			return mysink.New(sink.URL), sink.Records
//		})
//	}
package destinationtest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/offload-go/offload/destination"
)

// Patience bounds how long Run waits for a Deliver call to return.
const Patience = 10 * time.Second

// conditions lists every condition a record may carry.
var conditions = []destination.Condition{
	destination.Success,
	destination.RetriesExhausted,
	destination.NonRetryableError,
	destination.EventAgeExceeded,
	destination.Stopped,
	destination.Invalid,
}

// Run checks the destinations that newDestination makes; it makes a fresh
// one for each subtest, with the t of that subtest, so it can register its
// cleanup there.
//
// received returns every record the sink behind the destination has
// received so far, in any order. Run calls it only after the Deliver calls
// it checks have returned. Deliver returning nil means the record is
// delivered, so a destination that hands records on asynchronously (such
// as [destination.Target]) must make received wait until each record
// whose Deliver returned nil has arrived.
//
// Records are compared by their JSON encoding, the form a destination's
// consumer sees. A destination may receive a record more than once (the
// scheduler delivers at least once); Run requires each record it delivered
// at least once, and no record it did not deliver.
func Run(t *testing.T, newDestination func(t *testing.T) (d destination.Destination, received func() []destination.Record)) {
	t.Helper()
	t.Run("Conditions", func(t *testing.T) { testConditions(t, newDestination) })
	t.Run("Payloads", func(t *testing.T) { testPayloads(t, newDestination) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, newDestination) })
	t.Run("Repeated", func(t *testing.T) { testRepeated(t, newDestination) })
	t.Run("CancelledContext", func(t *testing.T) { testCancelled(t, newDestination) })
}

// record returns a record with every field set, for task n.
func record(n int, cond destination.Condition) destination.Record {
	r := destination.Record{
		Version:   destination.Version,
		Timestamp: time.Date(2026, 11, 25, 20, 15, 29, 535358910+n, time.UTC),
		RequestContext: destination.RequestContext{
			RequestID:              fmt.Sprintf("01KAX5JMZP442HFYP7HK%06d", n),
			FunctionArn:            "transcode",
			Condition:              cond,
			ApproximateInvokeCount: 1 + n%4,
		},
		RequestPayload:  fmt.Sprintf(`{"n":%d}`, n),
		ResponseContext: destination.ResponseContext{StatusCode: 200},
		ResponsePayload: "ok",
	}
	if cond != destination.Success {
		r.ResponseContext = destination.ResponseContext{StatusCode: 500, FunctionError: "handler answered 500 Internal Server Error"}
		r.ResponsePayload = "boom"
	}
	return r
}

func encode(t *testing.T, r destination.Record) string {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatalf("encode record: %v", err)
	}
	return string(b)
}

// deliver calls d.Deliver and fails the test if it does not return
// within Patience; it returns Deliver's error.
func deliver(t *testing.T, ctx context.Context, d destination.Destination, r destination.Record) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- d.Deliver(ctx, r) }()
	select {
	case err := <-done:
		return err
	case <-time.After(Patience):
		t.Fatalf("Deliver(%s) did not return within %s", r.RequestContext.RequestID, Patience)
		return nil
	}
}

// check compares what received reports with what was sent: each sent
// record is there, intact, and nothing else is but the records in maybe,
// whose Deliver failed: they may have arrived all the same.
func check(t *testing.T, received func() []destination.Record, sent []destination.Record, maybe ...destination.Record) {
	t.Helper()
	want := make(map[string]bool, len(sent))
	for _, r := range append(maybe, sent...) {
		want[encode(t, r)] = true
	}
	got := make(map[string]bool)
	for _, r := range received() {
		e := encode(t, r)
		if !want[e] {
			t.Errorf("received a record that was not delivered, or not intact:\n%s", e)
		}
		got[e] = true
	}
	for _, r := range sent {
		if e := encode(t, r); !got[e] {
			t.Errorf("delivered record not received intact:\n%s", e)
		}
	}
}

func testConditions(t *testing.T, newDestination func(*testing.T) (destination.Destination, func() []destination.Record)) {
	d, received := newDestination(t)
	var sent []destination.Record
	for i, cond := range conditions {
		r := record(i, cond)
		if err := deliver(t, context.Background(), d, r); err != nil {
			t.Fatalf("Deliver(%s): %v", cond, err)
		}
		sent = append(sent, r)
	}
	check(t, received, sent)
}

func testPayloads(t *testing.T, newDestination func(*testing.T) (destination.Destination, func() []destination.Record)) {
	d, received := newDestination(t)
	binary := []byte{0xff, 0xfe, 0x00, 0x01, 0x80, 'a', 0xc3}
	text := "héllo, 世界 🚀\n\t\"quoted\" <b>&amp;</b> \\ \u2028 \x00 end"
	r1 := record(100, destination.Success)
	r1.RequestPayload, r1.ResponsePayload = text, text+"!"
	r2 := record(101, destination.RetriesExhausted)
	r2.RequestPayload, r2.RequestPayloadEncoding = base64.StdEncoding.EncodeToString(binary), "base64"
	r2.ResponsePayload, r2.ResponsePayloadEncoding = base64.StdEncoding.EncodeToString(bytes.Repeat(binary, 100)), "base64"
	r3 := record(102, destination.Invalid)
	r3.RequestPayload, r3.ResponsePayload, r3.ResponseContext = "", "", destination.ResponseContext{}
	r4 := record(103, destination.Success)
	r4.RequestPayload = string(bytes.Repeat([]byte("0123456789abcdef"), 64<<10)) // 1 MiB
	sent := []destination.Record{r1, r2, r3, r4}
	for _, r := range sent {
		if err := deliver(t, context.Background(), d, r); err != nil {
			t.Fatalf("Deliver(%s): %v", r.RequestContext.RequestID, err)
		}
	}
	check(t, received, sent)
	for _, r := range received() {
		if r.RequestContext.RequestID != r2.RequestContext.RequestID {
			continue
		}
		b, err := base64.StdEncoding.DecodeString(r.RequestPayload)
		if err != nil || !bytes.Equal(b, binary) {
			t.Errorf("base64 request payload decodes to %x, %v; want %x", b, err, binary)
		}
	}
}

func testConcurrent(t *testing.T, newDestination func(*testing.T) (destination.Destination, func() []destination.Record)) {
	const n = 50
	d, received := newDestination(t)
	sent := make([]destination.Record, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		sent[i] = record(200+i, conditions[i%len(conditions)])
		wg.Go(func() { errs[i] = d.Deliver(context.Background(), sent[i]) })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(Patience):
		t.Fatalf("%d concurrent Deliver calls did not all return within %s", n, Patience)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Deliver: %v", err)
	}
	check(t, received, sent)
}

// testRepeated delivers the same record twice, as the scheduler does when
// it cannot record the first delivery: both calls succeed.
func testRepeated(t *testing.T, newDestination func(*testing.T) (destination.Destination, func() []destination.Record)) {
	d, received := newDestination(t)
	r := record(300, destination.Success)
	for i := range 2 {
		if err := deliver(t, context.Background(), d, r); err != nil {
			t.Fatalf("Deliver #%d of the same record: %v", i+1, err)
		}
	}
	check(t, received, []destination.Record{r})
}

// testCancelled: Deliver honours its context. With a context cancelled
// before or during the call it returns within Patience; if it returns nil
// anyway, the record must have been delivered.
func testCancelled(t *testing.T, newDestination func(*testing.T) (destination.Destination, func() []destination.Record)) {
	d, received := newDestination(t)
	var sent, maybe []destination.Record

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := record(400, destination.Success)
	if err := deliver(t, ctx, d, r); err == nil {
		sent = append(sent, r)
	} else {
		maybe = append(maybe, r)
	}

	ctx, cancel = context.WithCancel(context.Background())
	r = record(401, destination.Stopped)
	done := make(chan error, 1)
	go func() { done <- d.Deliver(ctx, r) }()
	cancel()
	select {
	case err := <-done:
		if err == nil {
			sent = append(sent, r)
		} else {
			maybe = append(maybe, r)
		}
	case <-time.After(Patience):
		t.Fatalf("Deliver with a context cancelled during the call did not return within %s", Patience)
	}
	check(t, received, sent, maybe...)
}
