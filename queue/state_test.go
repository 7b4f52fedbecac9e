package queue_test

import (
	"fmt"
	"net/http"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// TestStateJSONRecord: a state record in the JSON that queues wrote before
// the binary format is still read, whole, and the next change rewrites it
// in the binary format, keeping its history.
func TestStateJSONRecord(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "offload.db")
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	clk := newClock(t0)
	opts := &queue.Options{Now: clk.Now}
	q := openAt(t, path, opts)
	id := enqueue(t, q, &queue.Job{Target: "t"})
	clk.Advance(time.Second)
	l := leaseAll(t, q, clk.Now(), "t")[0]
	clk.Advance(time.Second)
	finishWith(t, q, l, queue.Outcome{Status: task.Failed, Error: "boom"})
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	// What json.Marshal made of the state before, with the index times
	// the queue wrote (enqueued at t0, finished at t0+2s) and every field.
	const old = `{"status":"Failed","attempts":1,"retryBase":0,"throttled":1,` +
		`"enqueuedAt":"2026-03-01T10:00:00Z","startedAt":"2026-03-01T10:00:01Z",` +
		`"finishedAt":"2026-03-01T10:00:02Z","lastError":"boom",` +
		`"events":[{"time":"2026-03-01T10:00:00Z","status":"Enqueued"},` +
		`{"time":"2026-03-01T10:00:01Z","status":"Running","attempt":1},` +
		`{"time":"2026-03-01T10:00:02Z","status":"Failed","attempt":1,"detail":"HTTP 500"}],` +
		`"response":{"statusCode":500,"header":{"Content-Type":["text/plain"],"X-Two":["a","b"]},"body":"b29wcw==","bodySize":4},` +
		`"deliveries":[{"destination":"onFailure","status":"delivered","tries":2,"updatedAt":"2026-03-01T10:00:03Z"}],` +
		`"progress":{"percent":12.5,"message":"step 1","updatedAt":"2026-03-01T10:00:01.5Z"},` +
		`"logs":[{"time":"2026-03-01T10:00:01.25Z","level":"INFO","message":"started","attempt":1}]}`
	editBolt(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("state")).Put(key16(id), []byte(old))
	})

	q = openAt(t, path, opts)
	got := status(t, q, id)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	want := &task.Task{
		ID: id, Target: "t", Status: task.Failed, Attempts: 1,
		CreatedAt: t0, EnqueuedAt: t0, StartedAt: at(1000), FinishedAt: at(2000), LastError: "boom",
		Events: []task.Event{
			{Time: t0, Status: task.Enqueued},
			{Time: at(1000), Status: task.Running, Attempt: 1},
			{Time: at(2000), Status: task.Failed, Attempt: 1, Detail: "HTTP 500"},
		},
		Response: &task.Response{
			StatusCode: 500, Header: http.Header{"Content-Type": {"text/plain"}, "X-Two": {"a", "b"}},
			Body: []byte("oops"), BodySize: 4,
		},
		Deliveries: []task.Delivery{{Destination: task.OnFailure, Status: task.DeliveryDelivered, Tries: 2, UpdatedAt: at(3000)}},
		Progress:   &task.Progress{Percent: 12.5, Message: "step 1", UpdatedAt: at(1500)},
		Logs:       []task.LogRecord{{Time: at(1250), Level: "INFO", Message: "started", Attempt: 1}},
	}
	got.Request = task.Request{}
	if diff := taskDiff(got, want); diff != "" {
		t.Fatalf("task from a JSON state record differs: %s", diff)
	}

	clk.Advance(time.Second)
	if _, err := task.Retry(ctx, q, id, "again"); err != nil {
		t.Fatal(err)
	}
	got = status(t, q, id)
	if n := len(got.Events); n != 4 || got.Events[2].Detail != "HTTP 500" || got.Events[3].Detail != "again" {
		t.Errorf("events after the rewrite = %+v, want the 3 old ones and the retry", got.Events)
	}
	if got.Response == nil || string(got.Response.Body) != "oops" || got.Progress == nil || len(got.Logs) != 1 {
		t.Errorf("after the rewrite: response %+v, progress %+v, logs %+v", got.Response, got.Progress, got.Logs)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	editBolt(t, path, func(tx *bolt.Tx) error {
		if rec := tx.Bucket([]byte("state")).Get(key16(id)); len(rec) == 0 || rec[0] == '{' {
			t.Errorf("state record after a change = %.40q, want the binary format", rec)
		}
		return nil
	})
}

// taskDiff names the first field where got and want differ, comparing
// times with Equal.
func taskDiff(got, want *task.Task) string {
	g, w := reflect.ValueOf(got).Elem(), reflect.ValueOf(want).Elem()
	for i := range g.NumField() {
		gf, wf := g.Field(i).Interface(), w.Field(i).Interface()
		if gt, ok := gf.(time.Time); ok {
			if !gt.Equal(wf.(time.Time)) {
				return fmt.Sprintf("%s = %v, want %v", g.Type().Field(i).Name, gt, wf)
			}
			continue
		}
		if !reflect.DeepEqual(gf, wf) {
			return fmt.Sprintf("%s = %+v, want %+v", g.Type().Field(i).Name, gf, wf)
		}
	}
	return ""
}
