package trigger_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

// FuzzAsyncHeaders sends requests with random values of every header the
// middleware reads. Whatever they are, it never panics; a request it
// classifies as sync reaches the handler untouched; an async one is answered
// only 202, 400, 409, 413, 422 or 503 with a JSON body; and a 202's task
// decodes back to the method, URL, headers and body that were sent (the
// capture round trip).
//
//	go test -run '^$' -fuzz FuzzAsyncHeaders ./trigger/
func FuzzAsyncHeaders(f *testing.F) {
	const (
		maxBody = 4 << 10
		inline  = 512 // bodies past it go to blob files
	)
	seeds := []struct {
		invocationType, delay, taskID, statefulID, idempotencyKey, prefer, query string
		body                                                                     []byte
	}{
		{"", "", "", "", "", "", "", nil},
		{"Sync", "", "", "", "", "", "a=1", []byte("sync")},
		{"Async", "", "", "", "", "", "", []byte("hello")},
		{"aSYNC", "10", "job_1", "", "", "", "x=%20y", []byte("{}")},
		{"", "", "", "", "", "respond-async", "", []byte("by prefer")},
		{"", "", "", "", "", `wait=10, respond-async; x="a,b"`, "", nil},
		{"", "", "", "", "", `foo="respond-async"`, "", nil},
		{"Async", "3601", "", "", "", "", "", nil},
		{"Async", "-1", "", "", "", "", "", nil},
		{"Async", "", "../x", "", "", "", "", nil},
		{"Async", "", "a", "b", "", "", "", nil},
		{"Async", "", "same", "same", "", "", "", []byte("twice")},
		{"Async", "", "same", "", "", "", "", []byte("twice")},
		{"Async", "", "", "", "key-1", "", "", []byte("one")},
		{"Async", "", "", "", "key-1", "", "", []byte("two")},
		{"Async", "", "", "", "key 2", "", "", nil},
		{"Event", "", "", "", "", "respond-async", "", nil},
		{"Async", "", "", "", "", "", "", bytes.Repeat([]byte("b"), inline+1)},
		{"Async", "", "", "", "", "", "", bytes.Repeat([]byte("c"), maxBody+1)},
		{"Async", "", "\xff", "", "", "", "", nil},
		{"Async", "0", strings.Repeat("z", 129), "", "", "", "", nil},
		{"0", "", "0", "0", "0", "0", " ", []byte("0")},
		{"Async", "", "", "", "", "", "q=\xff&r=%zz", nil},
	}
	for _, s := range seeds {
		f.Add(s.invocationType, s.delay, s.taskID, s.statefulID, s.idempotencyKey, s.prefer, s.query, s.body)
	}

	b := fuzzBundle(f, &trigger.Options{TaskPath: taskPath, MaxBodyBytes: maxBody, InlineBodyLimit: inline})
	f.Fuzz(func(t *testing.T, invocationType, delay, taskID, statefulID, idempotencyKey, prefer, query string, body []byte) {
		if strings.ContainsFunc(query, func(c rune) bool { return c <= ' ' || c == 0x7f || c == '#' }) {
			return // not a request line a server reads: net/http answers 400 itself
		}
		req, err := http.NewRequest(http.MethodPost, b.srv.URL+workPath+"fuzz?"+query, bytes.NewReader(body))
		if err != nil {
			return // not a URL a client can send
		}
		for _, h := range [][2]string{
			{trigger.HeaderInvocationType, invocationType},
			{trigger.HeaderAsyncDelay, delay},
			{trigger.HeaderAsyncTaskID, taskID},
			{trigger.HeaderStatefulID, statefulID},
			{trigger.HeaderIdempotencyKey, idempotencyKey},
			{"Prefer", prefer},
		} {
			if h[1] != "" {
				req.Header.Set(h[0], h[1])
			}
		}
		res, err := b.client.Do(req)
		if err != nil {
			return // a header value a client cannot send
		}
		got := readResult(t, res)

		// What the server read: net/http trims the values' outer spaces.
		typ := strings.Trim(invocationType, " \t")
		// ASCII case folding only, as the middleware does: "ſync" is not "sync".
		sync := strings.ToLower(typ) == "sync" && isASCII(typ) || (typ == "" && !strings.Contains(strings.ToLower(prefer), "respond-async"))
		maybeSync := typ == "" // Prefer may or may not name respond-async as a preference
		if got.header.Get("X-Handler") == "ran" {
			if !sync && !maybeSync {
				t.Fatalf("type %q, Prefer %q: passed to the handler", invocationType, prefer)
			}
			c := <-b.calls
			if c.Body != string(body) || c.URL != req.URL.RequestURI() {
				t.Fatalf("the handler saw %q %q, sent %q %q", c.URL, c.Body, req.URL.RequestURI(), body)
			}
			return
		}
		if sync {
			t.Fatalf("type %q, Prefer %q: answered %d %s instead of the handler", invocationType, prefer, got.status, got.body)
		}
		switch got.status {
		case http.StatusAccepted:
		case http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity, http.StatusServiceUnavailable:
			if got.code() == "" || got.header.Get("Content-Type") != "application/json" {
				t.Fatalf("%d without a JSON error: %s", got.status, got.body)
			}
			return
		default:
			t.Fatalf("status %d %s", got.status, got.body)
		}
		if len(body) > maxBody {
			t.Fatalf("a body of %d bytes accepted past MaxBodyBytes %d", len(body), maxBody)
		}
		id := got.header.Get(trigger.HeaderRequestID)
		var ack struct{ ID, Status string }
		if err := json.Unmarshal(got.body, &ack); err != nil || ack.ID != id || ack.Status != string(task.Enqueued) {
			t.Fatalf("202 body %s (%v) for task %q", got.body, err, id)
		}
		if got.header.Get("Preference-Applied") != "respond-async" && typ == "" {
			t.Fatalf("accepted by Prefer %q without Preference-Applied", prefer)
		}
		if want := cmpOr(strings.Trim(taskID, " \t"), strings.Trim(statefulID, " \t")); want != "" && id != want {
			t.Fatalf("task %q, asked for %q", id, want)
		}
		tk := b.query(t, id)
		if tk.Request.Method != http.MethodPost || tk.Request.URL != req.URL.RequestURI() || tk.Request.BodySize != int64(len(body)) {
			t.Fatalf("stored %s %s (%d bytes), sent POST %s (%d bytes)", tk.Request.Method, tk.Request.URL, tk.Request.BodySize, req.URL.RequestURI(), len(body))
		}
		if idempotencyKey != "" {
			return // may be the earlier task with this key and fingerprint, sent with other headers
		}
		if len(body) <= inline && !bytes.Equal(tk.Request.Body, body) {
			t.Fatalf("stored body %q, sent %q", tk.Request.Body, body)
		}
		for k, vs := range req.Header {
			if want := strings.Trim(vs[0], " \t"); !slices.Equal(tk.Request.Header[k], []string{want}) {
				t.Fatalf("stored %s: %q, sent %q", k, tk.Request.Header[k], want)
			}
		}
	})
}

// fuzzBundle is setup for a fuzz target: one service for every input.
func fuzzBundle(f *testing.F, opts *trigger.Options) *testBundle {
	q := testutil.OpenQueue(f, &queue.Options{Logger: discard})
	sched, err := invoke.New(q, &invoke.Options{Logger: discard})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = sched.Stop(f.Context()) })
	b := &testBundle{q: q, sched: sched, calls: make(chan handlerCall, 1)}
	mux := http.NewServeMux()
	mux.Handle(workPath+"{name}", trigger.New(sched, opts).Async(target, http.HandlerFunc(b.record), nil))
	b.srv = newTestServer(f, mux)
	b.client = b.srv.Client()
	return b
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
