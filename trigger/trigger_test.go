package trigger_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

// TestSyncPassesThrough covers the first row of the contract: without an
// async marker the handler answers, exactly as it would without the
// middleware, and nothing is stored.
func TestSyncPassesThrough(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		method string
		header []string // name, value pairs
	}{
		{"no header", http.MethodPost, nil},
		{"Sync", http.MethodPost, []string{trigger.HeaderInvocationType, "Sync"}},
		{"sYnC", http.MethodPost, []string{trigger.HeaderInvocationType, "sYnC"}},
		{"SYNC with spaces", http.MethodPost, []string{trigger.HeaderInvocationType, "  SYNC "}},
		{"GET", http.MethodGet, []string{trigger.HeaderInvocationType, "sync"}},
		{"Sync beats Prefer", http.MethodPost, []string{trigger.HeaderInvocationType, "Sync", "Prefer", "respond-async"}},
		{"other preference", http.MethodPost, []string{"Prefer", "wait=10, return=minimal"}},
		{"respond-async as a parameter value", http.MethodPost, []string{"Prefer", "handling=respond-async"}},
		{"respond-async inside a quoted value", http.MethodPost, []string{"Prefer", `foo="x, respond-async"`}},
		{"longer preference name", http.MethodPost, []string{"Prefer", "respond-asynchronously"}},
		{"async headers without the marker", http.MethodPost, []string{
			trigger.HeaderAsyncDelay, "not-a-number", trigger.HeaderAsyncTaskID, "../x", trigger.HeaderIdempotencyKey, "k",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, setupOpts{})
			req, err := http.NewRequest(tt.method, b.srv.URL+workPath+"alpha?x=1", strings.NewReader("payload"))
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < len(tt.header); i += 2 {
				req.Header.Add(tt.header[i], tt.header[i+1])
			}
			res := b.do(t, req)

			if res.status != http.StatusCreated {
				t.Errorf("status = %d, want the handler's %d", res.status, http.StatusCreated)
			}
			if got, want := string(res.body), "handled "+tt.method+" alpha: payload"; got != want {
				t.Errorf("body = %q, want %q", got, want)
			}
			if got := res.header.Get("X-Handler"); got != "ran" {
				t.Errorf("X-Handler = %q, want %q", got, "ran")
			}
			if got := res.header.Values("Set-Cookie"); !slices.Equal(got, []string{"a=1", "b=2"}) {
				t.Errorf("Set-Cookie = %q, want both values", got)
			}
			if got := res.header.Get("Content-Type"); got != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type = %q", got)
			}
			for _, h := range []string{trigger.HeaderRequestID, "Location", "Preference-Applied", "Retry-After"} {
				if v := res.header.Get(h); v != "" {
					t.Errorf("%s = %q on a sync answer", h, v)
				}
			}
			c := b.nextCall(t)
			if c.Replay || c.Method != tt.method || c.URL != "/work/alpha?x=1" || c.Body != "payload" {
				t.Errorf("handler saw %+v", c)
			}
			for i := 0; i < len(tt.header); i += 2 {
				if got := c.Header.Values(tt.header[i]); len(got) == 0 {
					t.Errorf("handler did not see header %s", tt.header[i])
				}
			}
			if n := len(b.stored(t)); n != 0 {
				t.Errorf("%d tasks stored for a sync call", n)
			}
		})
	}
}

// TestSyncStreams checks that a sync answer is not buffered: the client
// reads the first flushed part while the handler still waits for it.
func TestSyncStreams(t *testing.T) {
	t.Parallel()
	read := make(chan struct{})
	b := setup(t, setupOpts{handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("flush: %v", err)
			return
		}
		select {
		case <-read: // only reachable if the client got "first" already
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second\n")
	})})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.srv.URL+workPath+"s", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(trigger.HeaderInvocationType, "Sync")
	res, err := b.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	br := bufio.NewReader(res.Body)
	first, err := br.ReadString('\n')
	if err != nil || first != "first\n" {
		t.Fatalf("first line %q, %v: the answer was not streamed", first, err)
	}
	close(read)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "second\n" {
		t.Fatalf("rest %q, %v", rest, err)
	}
}

// TestSyncHijack checks that a sync handler can take the connection over
// through the middleware, as a WebSocket upgrade does.
func TestSyncHijack(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		line, err := brw.ReadString('\n')
		if err != nil {
			t.Errorf("read after hijack: %v", err)
			return
		}
		brw.WriteString("echo: " + line)
		brw.Flush()
	})})
	conn, err := net.Dial("tcp", b.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "GET %shijack HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", workPath)
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", res.StatusCode)
	}
	fmt.Fprintf(conn, "hello\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "echo: hello\n" {
		t.Fatalf("after hijack read %q, %v", line, err)
	}
}

// contractCase is one request against a fresh service.
type contractCase struct {
	name    string
	trigger *trigger.Options // nil: TaskPath taskPath
	policy  *invoke.Policy
	// wrap wraps the scheduler, to inject failures.
	wrap func(trigger.Enqueuer) trigger.Enqueuer
	// prep runs before the request; it may store tasks or stop the scheduler.
	prep func(t *testing.T, b *testBundle) string
	path string // default workPath+"alpha?x=1"
	// header holds name, value pairs; a name may repeat.
	header []string
	body   string
	// bodySize, if set, sends a generated body of that size instead.
	bodySize int
	chunked  bool

	wantStatus int
	wantCode   string // the JSON error code, for errors
	// wantHeader holds exact values; "" means absent.
	wantHeader map[string]string
	wantStored int
	// earlier: the 202 answers again for the task that prep accepted, so
	// the stored request is that one's.
	earlier bool
	// check examines a 202's task, or anything else; prepped is what prep returned.
	check func(t *testing.T, b *testBundle, res *result, prepped string)
}

// TestAsyncContract walks the rows of the HTTP contract in DESIGN.md that
// concern async requests, over real HTTP, with a real queue.
func TestAsyncContract(t *testing.T) {
	t.Parallel()
	async := []string{trigger.HeaderInvocationType, "Async"}
	with := func(h ...string) []string { return append(slices.Clone(async), h...) }
	acceptedAs := func(id string) func(*testing.T, *testBundle, *result, string) {
		return func(t *testing.T, b *testBundle, res *result, _ string) {
			if got := res.header.Get(trigger.HeaderRequestID); got != id {
				t.Errorf("task ID %q, want %q", got, id)
			}
		}
	}
	readyIn := func(d time.Duration) func(*testing.T, *testBundle, *result, string) {
		return func(t *testing.T, b *testBundle, res *result, before string) {
			tk := b.query(t, res.header.Get(trigger.HeaderRequestID))
			// prep returned the time before the request; the task was
			// created between then and now.
			from, err := time.Parse(time.RFC3339Nano, before)
			if err != nil {
				t.Fatal(err)
			}
			if lo, hi := from.Add(d), time.Now().Add(d); tk.ReadyAt.Before(lo) || tk.ReadyAt.After(hi) {
				t.Errorf("ReadyAt %s, want within [%s, %s]", tk.ReadyAt, lo, hi)
			}
		}
	}
	now := func(*testing.T, *testBundle) string { return time.Now().Format(time.RFC3339Nano) }
	bigID := strings.Repeat("a", task.MaxIDLen)
	noBlobs := func(t *testing.T, b *testBundle, _ *result, _ string) {
		if blobs := b.blobs(t); len(blobs) != 0 {
			t.Errorf("%d blob files left behind", len(blobs))
		}
	}
	storeDown := errors.New("disk full")

	tests := []contractCase{
		// X-Fc-Invocation-Type: Async (any case), or Prefer: respond-async.
		{name: "Async", header: async, wantStatus: 202, wantStored: 1,
			wantHeader: map[string]string{"Preference-Applied": "", "Retry-After": ""}},
		{name: "async", header: []string{trigger.HeaderInvocationType, "async"}, wantStatus: 202, wantStored: 1},
		{name: "aSYNc", header: []string{trigger.HeaderInvocationType, "aSYNc"}, wantStatus: 202, wantStored: 1},
		{name: "Async without a body", path: workPath + "beta", header: async, wantStatus: 202, wantStored: 1},
		{name: "Prefer respond-async", header: []string{"Prefer", "respond-async"}, wantStatus: 202, wantStored: 1,
			wantHeader: map[string]string{"Preference-Applied": "respond-async"}},
		{name: "Prefer among others", header: []string{"Prefer", "wait=10, respond-async"}, wantStatus: 202, wantStored: 1,
			wantHeader: map[string]string{"Preference-Applied": "respond-async"}},
		{name: "Prefer with parameters", header: []string{"Prefer", `return=minimal, respond-async; foo="a,b";bar, wait=5`}, wantStatus: 202, wantStored: 1,
			wantHeader: map[string]string{"Preference-Applied": "respond-async"}},
		{name: "Prefer in any case", header: []string{"Prefer", "Respond-Async"}, wantStatus: 202, wantStored: 1,
			wantHeader: map[string]string{"Preference-Applied": "respond-async"}},
		{name: "Prefer on its second line", header: []string{"Prefer", "wait=10", "Prefer", "respond-async"}, wantStatus: 202, wantStored: 1,
			wantHeader: map[string]string{"Preference-Applied": "respond-async"}},
		{name: "Prefer and Async", header: with("Prefer", "respond-async"), wantStatus: 202, wantStored: 1,
			wantHeader: map[string]string{"Preference-Applied": "respond-async"}},
		{name: "no Location without TaskPath", trigger: &trigger.Options{}, header: async, wantStatus: 202, wantStored: 1,
			wantHeader: map[string]string{"Location": ""}},
		{name: "TaskPath without its slash", trigger: &trigger.Options{TaskPath: strings.TrimSuffix(taskPath, "/")}, header: async,
			wantStatus: 202, wantStored: 1, check: func(t *testing.T, b *testBundle, res *result, _ string) {
				if loc, want := res.header.Get("Location"), taskPath+res.header.Get(trigger.HeaderRequestID); loc != want {
					t.Errorf("Location %q, want %q", loc, want)
				}
			}},

		// Any other X-Fc-Invocation-Type: 400, nothing stored.
		{name: "unknown type", header: []string{trigger.HeaderInvocationType, "Asynchronous"},
			wantStatus: 400, wantCode: trigger.CodeInvalidInvocationType},
		{name: "unknown type beats Prefer", header: []string{trigger.HeaderInvocationType, "Event", "Prefer", "respond-async"},
			wantStatus: 400, wantCode: trigger.CodeInvalidInvocationType},
		{name: "two types in one value", header: []string{trigger.HeaderInvocationType, "Sync, Async"},
			wantStatus: 400, wantCode: trigger.CodeInvalidInvocationType},
		{name: "non-ASCII type", header: []string{trigger.HeaderInvocationType, "Asynç"},
			wantStatus: 400, wantCode: trigger.CodeInvalidInvocationType},
		{name: "empty type", header: []string{trigger.HeaderInvocationType, ""},
			wantStatus: 400, wantCode: trigger.CodeInvalidInvocationType},

		// An async header sent empty is malformed, not absent: a client
		// whose ID or key came out blank would get a new task per retry.
		{name: "empty task ID", header: with(trigger.HeaderAsyncTaskID, ""),
			wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "empty stateful ID", header: with(trigger.HeaderStatefulID, ""),
			wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "empty and named ID", header: with(trigger.HeaderAsyncTaskID, "", trigger.HeaderStatefulID, "job_a"),
			wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "empty delay", header: with(trigger.HeaderAsyncDelay, ""),
			wantStatus: 400, wantCode: trigger.CodeInvalidAsyncDelay},
		{name: "empty idempotency key", header: with(trigger.HeaderIdempotencyKey, ""),
			wantStatus: 400, wantCode: trigger.CodeInvalidIdempotencyKey},

		// A header that must have one value, repeated with different ones:
		// 400, nothing stored (a proxy may read the other value).
		{name: "Sync and Async on two lines", header: []string{trigger.HeaderInvocationType, "Async", trigger.HeaderInvocationType, "Sync"},
			wantStatus: 400, wantCode: trigger.CodeInvalidInvocationType},
		{name: "Async on two lines", header: []string{trigger.HeaderInvocationType, "Async", trigger.HeaderInvocationType, "async"},
			wantStatus: 202, wantStored: 1},
		{name: "empty then Async", header: []string{trigger.HeaderInvocationType, "", trigger.HeaderInvocationType, "Async"},
			wantStatus: 400, wantCode: trigger.CodeInvalidInvocationType},
		{name: "two delays", header: with(trigger.HeaderAsyncDelay, "1", trigger.HeaderAsyncDelay, "2"),
			wantStatus: 400, wantCode: trigger.CodeInvalidAsyncDelay},
		{name: "two task IDs", header: with(trigger.HeaderAsyncTaskID, "job_a", trigger.HeaderAsyncTaskID, "job_b"),
			wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "two stateful IDs", header: with(trigger.HeaderStatefulID, "job_a", trigger.HeaderStatefulID, "job_b"),
			wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "two idempotency keys", header: with(trigger.HeaderIdempotencyKey, "k1", trigger.HeaderIdempotencyKey, "k2"),
			wantStatus: 400, wantCode: trigger.CodeInvalidIdempotencyKey},

		// X-Fc-Async-Delay: N whole seconds, 0..MaxDelay.
		{name: "delay 0", prep: now, header: with(trigger.HeaderAsyncDelay, "0"), wantStatus: 202, wantStored: 1, check: readyIn(0)},
		{name: "delay 30", prep: now, header: with(trigger.HeaderAsyncDelay, "30"), wantStatus: 202, wantStored: 1, check: readyIn(30 * time.Second)},
		{name: "delay at the default max", prep: now, header: with(trigger.HeaderAsyncDelay, "3600"), wantStatus: 202, wantStored: 1, check: readyIn(time.Hour)},
		{name: "delay with Prefer", prep: now, header: []string{"Prefer", "respond-async", trigger.HeaderAsyncDelay, "7"}, wantStatus: 202, wantStored: 1, check: readyIn(7 * time.Second)},
		{name: "delay past the default max", header: with(trigger.HeaderAsyncDelay, "3601"), wantStatus: 400, wantCode: trigger.CodeInvalidAsyncDelay},
		{name: "delay past MaxDelay", trigger: &trigger.Options{TaskPath: taskPath, MaxDelay: 10 * time.Second},
			header: with(trigger.HeaderAsyncDelay, "11"), wantStatus: 400, wantCode: trigger.CodeInvalidAsyncDelay},
		{name: "delay at MaxDelay", prep: now, trigger: &trigger.Options{TaskPath: taskPath, MaxDelay: 10 * time.Second},
			header: with(trigger.HeaderAsyncDelay, "10"), wantStatus: 202, wantStored: 1, check: readyIn(10 * time.Second)},
		{name: "negative delay", header: with(trigger.HeaderAsyncDelay, "-1"), wantStatus: 400, wantCode: trigger.CodeInvalidAsyncDelay},
		{name: "signed delay", header: with(trigger.HeaderAsyncDelay, "+5"), wantStatus: 400, wantCode: trigger.CodeInvalidAsyncDelay},
		{name: "fractional delay", header: with(trigger.HeaderAsyncDelay, "1.5"), wantStatus: 400, wantCode: trigger.CodeInvalidAsyncDelay},
		{name: "delay with unit", header: with(trigger.HeaderAsyncDelay, "5s"), wantStatus: 400, wantCode: trigger.CodeInvalidAsyncDelay},
		{name: "delay in hex", header: with(trigger.HeaderAsyncDelay, "0x10"), wantStatus: 400, wantCode: trigger.CodeInvalidAsyncDelay},
		{name: "huge delay", header: with(trigger.HeaderAsyncDelay, "18446744073709551616"), wantStatus: 400, wantCode: trigger.CodeInvalidAsyncDelay},
		{name: "delay 2^32", header: with(trigger.HeaderAsyncDelay, "4294967296"), wantStatus: 400, wantCode: trigger.CodeInvalidAsyncDelay},

		// Caller-chosen task IDs.
		{name: "task ID", header: with(trigger.HeaderAsyncTaskID, "job_1-a"), wantStatus: 202, wantStored: 1,
			wantHeader: map[string]string{"Location": taskPath + "job_1-a"}, check: acceptedAs("job_1-a")},
		{name: "stateful invocation ID", header: with(trigger.HeaderStatefulID, "Job2"), wantStatus: 202, wantStored: 1, check: acceptedAs("Job2")},
		{name: "both ID headers agree", header: with(trigger.HeaderAsyncTaskID, "same", trigger.HeaderStatefulID, "same"), wantStatus: 202, wantStored: 1, check: acceptedAs("same")},
		{name: "one-character ID", header: with(trigger.HeaderAsyncTaskID, "_"), wantStatus: 202, wantStored: 1, check: acceptedAs("_")},
		{name: "128-character ID", header: with(trigger.HeaderAsyncTaskID, bigID), wantStatus: 202, wantStored: 1, check: acceptedAs(bigID)},
		{name: "ID with Prefer", header: []string{"Prefer", "respond-async", trigger.HeaderStatefulID, "pref"}, wantStatus: 202, wantStored: 1, check: acceptedAs("pref")},
		{name: "both ID headers differ", header: with(trigger.HeaderAsyncTaskID, "one", trigger.HeaderStatefulID, "two"), wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "path traversal ID", header: with(trigger.HeaderAsyncTaskID, "../x"), wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "ID with a slash", header: with(trigger.HeaderStatefulID, "a/b"), wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "ID with a dot", header: with(trigger.HeaderAsyncTaskID, "a.b"), wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "invalid UTF-8 ID", header: with(trigger.HeaderAsyncTaskID, "a\xff\xfe"), wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "non-ASCII ID", header: with(trigger.HeaderAsyncTaskID, "zadanie_ł"), wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "129-character ID", header: with(trigger.HeaderAsyncTaskID, bigID+"a"), wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "ID with a leading digit", header: with(trigger.HeaderAsyncTaskID, "1abc"), wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "ID in generated form", header: with(trigger.HeaderAsyncTaskID, "01ARZ3NDEKTSV4RRFFQ69G5FAV"), wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "ID with a leading dash", header: with(trigger.HeaderAsyncTaskID, "-abc"), wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "ID with a space", header: with(trigger.HeaderAsyncTaskID, "a b"), wantStatus: 400, wantCode: trigger.CodeInvalidTaskID},
		{name: "duplicate ID",
			prep: func(t *testing.T, b *testBundle) string {
				return b.accept(t, "first", trigger.HeaderAsyncTaskID, "dup")
			},
			header: with(trigger.HeaderAsyncTaskID, "dup"), body: "second", wantStatus: 409, wantCode: trigger.CodeTaskAlreadyExists, wantStored: 1,
			wantHeader: map[string]string{"Location": taskPath + "dup", trigger.HeaderRequestID: ""},
			check: func(t *testing.T, b *testBundle, _ *result, _ string) {
				if got := b.query(t, "dup").Request.Body; string(got) != "first" {
					t.Errorf("the stored task's body became %q", got)
				}
			}},
		{name: "duplicate ID through the other header",
			prep: func(t *testing.T, b *testBundle) string {
				return b.accept(t, "first", trigger.HeaderAsyncTaskID, "dup")
			},
			header: with(trigger.HeaderStatefulID, "dup"), wantStatus: 409, wantCode: trigger.CodeTaskAlreadyExists, wantStored: 1,
			wantHeader: map[string]string{"Location": taskPath + "dup"}},
		{name: "duplicate ID without TaskPath", trigger: &trigger.Options{},
			prep:   func(t *testing.T, b *testBundle) string { return b.accept(t, "", trigger.HeaderAsyncTaskID, "dup") },
			header: with(trigger.HeaderAsyncTaskID, "dup"), wantStatus: 409, wantCode: trigger.CodeTaskAlreadyExists, wantStored: 1,
			wantHeader: map[string]string{"Location": ""}},

		// Idempotency-Key.
		{name: "idempotency key, same body",
			prep: func(t *testing.T, b *testBundle) string {
				return b.accept(t, "same", trigger.HeaderIdempotencyKey, "k-1")
			},
			path: workPath + "alpha", header: with(trigger.HeaderIdempotencyKey, "k-1"), body: "same", wantStatus: 202, wantStored: 1, earlier: true,
			check: func(t *testing.T, b *testBundle, res *result, first string) {
				if got := res.header.Get(trigger.HeaderRequestID); got != first {
					t.Errorf("answered task %q, want the first acceptance %q", got, first)
				}
				if got := res.header.Get("Location"); got != taskPath+first {
					t.Errorf("Location %q, want %q", got, taskPath+first)
				}
			}},
		{name: "idempotency key, same body by Prefer",
			prep: func(t *testing.T, b *testBundle) string {
				return b.accept(t, "same", trigger.HeaderIdempotencyKey, "k-1")
			},
			path: workPath + "alpha", header: []string{"Prefer", "respond-async", trigger.HeaderIdempotencyKey, "k-1"}, body: "same", wantStatus: 202, wantStored: 1, earlier: true,
			check: func(t *testing.T, b *testBundle, res *result, first string) {
				if got := res.header.Get(trigger.HeaderRequestID); got != first {
					t.Errorf("answered task %q, want the first acceptance %q", got, first)
				}
			}},
		{name: "idempotency key, other body",
			prep: func(t *testing.T, b *testBundle) string {
				return b.accept(t, "same", trigger.HeaderIdempotencyKey, "k-1")
			},
			path: workPath + "alpha", header: with(trigger.HeaderIdempotencyKey, "k-1"), body: "other", wantStatus: 422, wantCode: trigger.CodeIdempotencyKeyMismatch, wantStored: 1},
		{name: "idempotency key, other URL",
			prep: func(t *testing.T, b *testBundle) string {
				return b.accept(t, "same", trigger.HeaderIdempotencyKey, "k-1")
			},
			path: workPath + "beta", header: with(trigger.HeaderIdempotencyKey, "k-1"), body: "same",
			wantStatus: 422, wantCode: trigger.CodeIdempotencyKeyMismatch, wantStored: 1},
		{name: "idempotency key, other task ID",
			prep: func(t *testing.T, b *testBundle) string {
				return b.accept(t, "same", trigger.HeaderIdempotencyKey, "k-1")
			},
			path: workPath + "alpha", header: with(trigger.HeaderIdempotencyKey, "k-1", trigger.HeaderAsyncTaskID, "mine"), body: "same",
			wantStatus: 422, wantCode: trigger.CodeIdempotencyKeyMismatch, wantStored: 1},
		// Capture says who sent a request: a key reused by someone else
		// is not answered with the first sender's task.
		{name: "idempotency key, other user", wrap: capturingUser,
			prep: func(t *testing.T, b *testBundle) string {
				return b.accept(t, "same", trigger.HeaderIdempotencyKey, "k-1", "X-User", "alice")
			},
			path: workPath + "alpha", header: with(trigger.HeaderIdempotencyKey, "k-1", "X-User", "bob"), body: "same",
			wantStatus: 422, wantCode: trigger.CodeIdempotencyKeyMismatch, wantStored: 1},
		{name: "idempotency key, same user", wrap: capturingUser,
			prep: func(t *testing.T, b *testBundle) string {
				return b.accept(t, "same", trigger.HeaderIdempotencyKey, "k-1", "X-User", "alice")
			},
			path: workPath + "alpha", header: with(trigger.HeaderIdempotencyKey, "k-1", "X-User", "alice"), body: "same",
			wantStatus: 202, wantStored: 1, earlier: true},
		{name: "other idempotency key",
			prep: func(t *testing.T, b *testBundle) string {
				return b.accept(t, "same", trigger.HeaderIdempotencyKey, "k-1")
			},
			header: with(trigger.HeaderIdempotencyKey, "k-2"), body: "same", wantStatus: 202, wantStored: 2},
		{name: "idempotency key with a space", header: with(trigger.HeaderIdempotencyKey, "a b"), wantStatus: 400, wantCode: trigger.CodeInvalidIdempotencyKey},
		{name: "non-ASCII idempotency key", header: with(trigger.HeaderIdempotencyKey, "ключ"), wantStatus: 400, wantCode: trigger.CodeInvalidIdempotencyKey},
		{name: "idempotency key too long", header: with(trigger.HeaderIdempotencyKey, strings.Repeat("k", 256)), wantStatus: 400, wantCode: trigger.CodeInvalidIdempotencyKey},
		{name: "idempotency key at the longest", header: with(trigger.HeaderIdempotencyKey, strings.Repeat("k", 255)), wantStatus: 202, wantStored: 1},

		// Body over MaxBodyBytes: 413, nothing stored, no blob left.
		{name: "body at MaxBodyBytes", trigger: &trigger.Options{TaskPath: taskPath, MaxBodyBytes: 1024},
			header: async, bodySize: 1024, wantStatus: 202, wantStored: 1},
		{name: "body over MaxBodyBytes", trigger: &trigger.Options{TaskPath: taskPath, MaxBodyBytes: 1024},
			header: async, bodySize: 1025, wantStatus: 413, wantCode: trigger.CodeRequestTooLarge},
		{name: "chunked body over MaxBodyBytes", trigger: &trigger.Options{TaskPath: taskPath, MaxBodyBytes: 1024},
			header: async, bodySize: 1025, chunked: true, wantStatus: 413, wantCode: trigger.CodeRequestTooLarge},
		{name: "blob body at MaxBodyBytes", trigger: &trigger.Options{TaskPath: taskPath, MaxBodyBytes: 64 << 10, InlineBodyLimit: 1024},
			header: async, bodySize: 64 << 10, chunked: true, wantStatus: 202, wantStored: 1,
			check: func(t *testing.T, b *testBundle, res *result, _ string) {
				if got := b.query(t, res.header.Get(trigger.HeaderRequestID)).Request.BodySize; got != 64<<10 {
					t.Errorf("stored body size %d", got)
				}
				if blobs := b.blobs(t); len(blobs) != 1 {
					t.Errorf("%d blob files, want 1", len(blobs))
				}
			}},
		{name: "blob body over MaxBodyBytes", trigger: &trigger.Options{TaskPath: taskPath, MaxBodyBytes: 64 << 10, InlineBodyLimit: 1024},
			header: async, bodySize: 64<<10 + 1, wantStatus: 413, wantCode: trigger.CodeRequestTooLarge, check: noBlobs},
		{name: "chunked blob body over MaxBodyBytes", trigger: &trigger.Options{TaskPath: taskPath, MaxBodyBytes: 64 << 10, InlineBodyLimit: 1024},
			header: async, bodySize: 64<<10 + 1, chunked: true, wantStatus: 413, wantCode: trigger.CodeRequestTooLarge, check: noBlobs},
		{name: "chunked body over the default MaxBodyBytes",
			header: async, bodySize: trigger.DefaultMaxBodyBytes + 1, chunked: true, wantStatus: 413, wantCode: trigger.CodeRequestTooLarge, check: noBlobs},

		// Queue full, store failing, shutting down: 503 with Retry-After.
		{name: "queue full", policy: &invoke.Policy{MaxQueued: 2},
			prep: func(t *testing.T, b *testBundle) string {
				b.accept(t, "1")
				b.accept(t, "2")
				return ""
			},
			header: async, wantStatus: 503, wantCode: trigger.CodeQueueFull, wantStored: 2,
			wantHeader: map[string]string{"Retry-After": "1"}},
		{name: "queue full, RetryAfter set", policy: &invoke.Policy{MaxQueued: 1},
			trigger: &trigger.Options{TaskPath: taskPath, RetryAfter: 5 * time.Second},
			prep:    func(t *testing.T, b *testBundle) string { return b.accept(t, "1") },
			header:  async, wantStatus: 503, wantCode: trigger.CodeQueueFull, wantStored: 1,
			wantHeader: map[string]string{"Retry-After": "5"}},
		{name: "sync call when the queue is full", policy: &invoke.Policy{MaxQueued: 1},
			prep:   func(t *testing.T, b *testBundle) string { return b.accept(t, "1") },
			header: []string{trigger.HeaderInvocationType, "Sync"}, wantStatus: 201, wantStored: 1},
		{name: "shutting down",
			prep: func(t *testing.T, b *testBundle) string {
				if err := b.sched.Stop(context.Background()); err != nil {
					t.Fatal(err)
				}
				return ""
			},
			header: async, wantStatus: 503, wantCode: trigger.CodeShuttingDown,
			wantHeader: map[string]string{"Retry-After": "1"}},
		{name: "shutting down with a blob body", trigger: &trigger.Options{TaskPath: taskPath, InlineBodyLimit: 1024},
			prep: func(t *testing.T, b *testBundle) string {
				if err := b.sched.Stop(context.Background()); err != nil {
					t.Fatal(err)
				}
				return ""
			},
			header: async, bodySize: 8 << 10, wantStatus: 503, wantCode: trigger.CodeShuttingDown,
			wantHeader: map[string]string{"Retry-After": "1"}, check: noBlobs},
		{name: "store failing",
			wrap:   func(e trigger.Enqueuer) trigger.Enqueuer { return &faultyEnqueuer{Enqueuer: e, enqueueErr: storeDown} },
			header: async, wantStatus: 503, wantCode: trigger.CodeStoreUnavailable, wantHeader: map[string]string{"Retry-After": "1"}},
		{name: "store failing with a blob body", trigger: &trigger.Options{TaskPath: taskPath, InlineBodyLimit: 1024},
			wrap:   func(e trigger.Enqueuer) trigger.Enqueuer { return &faultyEnqueuer{Enqueuer: e, enqueueErr: storeDown} },
			header: async, bodySize: 8 << 10, wantStatus: 503, wantCode: trigger.CodeStoreUnavailable,
			wantHeader: map[string]string{"Retry-After": "1"}, check: noBlobs},
		{name: "blob cannot be created", trigger: &trigger.Options{TaskPath: taskPath, InlineBodyLimit: 1024},
			wrap:   func(e trigger.Enqueuer) trigger.Enqueuer { return &faultyEnqueuer{Enqueuer: e, createErr: storeDown} },
			header: async, bodySize: 8 << 10, wantStatus: 503, wantCode: trigger.CodeStoreUnavailable,
			wantHeader: map[string]string{"Retry-After": "1"}},
		{name: "disk full while writing a blob", trigger: &trigger.Options{TaskPath: taskPath, InlineBodyLimit: 1024},
			wrap:   func(e trigger.Enqueuer) trigger.Enqueuer { return &faultyEnqueuer{Enqueuer: e, writeErr: storeDown} },
			header: async, bodySize: 8 << 10, wantStatus: 503, wantCode: trigger.CodeStoreUnavailable,
			wantHeader: map[string]string{"Retry-After": "1"}, check: noBlobs},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, setupOpts{trigger: tt.trigger, policy: tt.policy, enqueuer: tt.wrap})
			var prepped string
			if tt.prep != nil {
				prepped = tt.prep(t, b)
			}
			res := b.do(t, tt.request(t, b))

			if res.status != tt.wantStatus {
				t.Fatalf("status %d, want %d; body %s", res.status, tt.wantStatus, res.body)
			}
			for name, want := range tt.wantHeader {
				if got := res.header.Get(name); got != want {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
			switch {
			case tt.wantStatus == http.StatusAccepted:
				checkAccepted(t, b, res, tt)
			case tt.wantCode != "":
				if got := res.code(); got != tt.wantCode {
					t.Errorf("code %q, want %q; body %s", got, tt.wantCode, res.body)
				}
				if ct := res.header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("error Content-Type %q", ct)
				}
				if tt.wantStatus != http.StatusConflict && res.header.Get("Location") != "" {
					t.Errorf("Location %q on a %d", res.header.Get("Location"), tt.wantStatus)
				}
			}
			if tt.wantStatus == http.StatusServiceUnavailable && res.header.Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
			if got := len(b.stored(t)); got != tt.wantStored {
				t.Errorf("%d tasks stored, want %d", got, tt.wantStored)
			}
			if tt.wantStatus != http.StatusCreated {
				select {
				case c := <-b.calls:
					t.Errorf("the handler ran for a %d: %+v", tt.wantStatus, c)
				default:
				}
			}
			if tt.check != nil {
				tt.check(t, b, res, prepped)
			}
		})
	}
}

func (tt *contractCase) request(t *testing.T, b *testBundle) *http.Request {
	path := cmpOr(tt.path, workPath+"alpha?x=1")
	var body io.Reader = strings.NewReader(tt.body)
	size := int64(len(tt.body))
	if tt.bodySize > 0 {
		body, size = &patternBody{n: int64(tt.bodySize)}, int64(tt.bodySize)
	}
	if tt.chunked {
		body = struct{ io.Reader }{body} // hide the size: the client sends it chunked
		size = -1
	}
	req, err := http.NewRequest(http.MethodPost, b.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	if size == 0 {
		req.Body = http.NoBody
	}
	for i := 0; i+1 < len(tt.header); i += 2 {
		req.Header.Add(tt.header[i], tt.header[i+1])
	}
	return req
}

// checkAccepted checks a 202 against the contract and the stored task
// against the request.
func checkAccepted(t *testing.T, b *testBundle, res *result, tt contractCase) {
	t.Helper()
	id := res.header.Get(trigger.HeaderRequestID)
	if id == "" {
		t.Fatal("202 without " + trigger.HeaderRequestID)
	}
	var body struct {
		ID     string      `json:"id"`
		Status task.Status `json:"status"`
	}
	if err := json.Unmarshal(res.body, &body); err != nil || body.ID != id || body.Status != task.Enqueued {
		t.Errorf("202 body %s (%v), want id %q and status Enqueued", res.body, err, id)
	}
	if ct := res.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if _, ok := tt.wantHeader["Location"]; !ok {
		if got := res.header.Get("Location"); got != taskPath+id {
			t.Errorf("Location %q, want %q", got, taskPath+id)
		}
	}
	if tt.earlier {
		return
	}
	tk := b.query(t, id)
	want := tt.request(t, b)
	if tk.Target != target || tk.Request.Method != want.Method || tk.Request.URL != want.URL.RequestURI() {
		t.Errorf("stored %s %s for %s, want %s %s for %s", tk.Request.Method, tk.Request.URL, tk.Target, want.Method, want.URL.RequestURI(), target)
	}
	if tt.bodySize == 0 && string(tk.Request.Body) != tt.body {
		t.Errorf("stored body %q, want %q", tk.Request.Body, tt.body)
	}
	if tt.bodySize > 0 && tk.Request.BodySize != int64(tt.bodySize) {
		t.Errorf("stored body size %d, want %d", tk.Request.BodySize, tt.bodySize)
	}
	for i := 0; i+1 < len(tt.header); i += 2 {
		if got := tk.Request.Header.Values(tt.header[i]); !slices.Contains(got, tt.header[i+1]) {
			t.Errorf("stored header %s = %q, want %q among them", tt.header[i], got, tt.header[i+1])
		}
	}
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// patternBlock holds the bytes of patternBody: byte i is byte(i % 251).
var patternBlock = func() []byte {
	b := make([]byte, 251*4096)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}()

// userCapture is the scheduler with a Capture that keeps the X-User header.
type userCapture struct{ trigger.Enqueuer }

func (userCapture) Capture(r *http.Request) map[string]string {
	return map[string]string{"user": r.Header.Get("X-User")}
}

func capturingUser(e trigger.Enqueuer) trigger.Enqueuer { return userCapture{e} }

// faultyEnqueuer is the scheduler with failures injected.
type faultyEnqueuer struct {
	trigger.Enqueuer
	enqueueErr, createErr, writeErr error
}

func (f *faultyEnqueuer) Enqueue(ctx context.Context, job *queue.Job) (queue.Receipt, error) {
	if f.enqueueErr != nil {
		return queue.Receipt{}, f.enqueueErr
	}
	return f.Enqueuer.Enqueue(ctx, job)
}

func (f *faultyEnqueuer) CreateBlob() (queue.Blob, error) {
	if f.createErr != nil {
		return nil, f.createErr
	}
	blob, err := f.Enqueuer.CreateBlob()
	if err != nil || f.writeErr == nil {
		return blob, err
	}
	return &faultyBlob{Blob: blob, err: f.writeErr}, nil
}

// faultyBlob fails its second write, as a disk that fills up does.
type faultyBlob struct {
	queue.Blob
	writes int
	err    error
}

func (f *faultyBlob) Write(p []byte) (int, error) {
	if f.writes++; f.writes > 1 {
		return 0, f.err
	}
	return f.Blob.Write(p)
}

// TestConcurrentDuplicateIDs: of many concurrent requests for one caller
// ID, exactly one is accepted; the others get 409 and its Location.
func TestConcurrentDuplicateIDs(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	const n = 50
	statuses := make([]int, n)
	locations := make([]string, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			res := b.post(t, workPath+"alpha", strconv.Itoa(i), trigger.HeaderInvocationType, "Async", trigger.HeaderAsyncTaskID, "once")
			statuses[i], locations[i] = res.status, res.header.Get("Location")
		})
	}
	close(start)
	wg.Wait()
	accepted := 0
	for i, s := range statuses {
		switch s {
		case http.StatusAccepted:
			accepted++
		case http.StatusConflict:
		default:
			t.Errorf("request %d: status %d", i, s)
		}
		if locations[i] != taskPath+"once" {
			t.Errorf("request %d: Location %q", i, locations[i])
		}
	}
	if accepted != 1 {
		t.Errorf("%d requests accepted, want exactly 1", accepted)
	}
	if tasks := b.stored(t); len(tasks) != 1 || tasks[0].ID != "once" {
		t.Errorf("stored %d tasks, want the one task %q", len(tasks), "once")
	}
}

// TestConcurrentIdempotentRequests: concurrent retries of one request with
// one Idempotency-Key all get the same 202 and store one task.
func TestConcurrentIdempotentRequests(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	const n = 50
	ids := make([]string, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			res := b.post(t, workPath+"alpha", "body", trigger.HeaderInvocationType, "Async", trigger.HeaderIdempotencyKey, "retry-me")
			if res.status != http.StatusAccepted {
				t.Errorf("request %d: status %d %s", i, res.status, res.body)
			}
			ids[i] = res.header.Get(trigger.HeaderRequestID)
		})
	}
	close(start)
	wg.Wait()
	if ids[0] == "" || !allEqual(ids) {
		t.Errorf("answered IDs %q, want one", slices.Compact(slices.Sorted(slices.Values(ids))))
	}
	if n := len(b.stored(t)); n != 1 {
		t.Errorf("%d tasks stored, want 1", n)
	}
}

func allEqual(s []string) bool {
	for _, v := range s {
		if v != s[0] {
			return false
		}
	}
	return true
}

// TestStatusURLAnswersAtOnce: the Location of a 202 answers 200 the moment
// the 202 arrives, for many concurrent accepts, while the scheduler runs.
func TestStatusURLAnswersAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{run: true})
	const n = 32
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res := b.post(t, workPath+"alpha", strconv.Itoa(i), trigger.HeaderInvocationType, "Async")
			if res.status != http.StatusAccepted {
				t.Errorf("status %d", res.status)
				return
			}
			loc := res.header.Get("Location")
			st := b.get(t, loc)
			if st.status != http.StatusOK {
				t.Errorf("GET %s right after its 202: %d %s", loc, st.status, st.body)
				return
			}
			var v struct {
				ID     string
				Status task.Status
			}
			if err := json.Unmarshal(st.body, &v); err != nil || v.ID != res.header.Get(trigger.HeaderRequestID) || !v.Status.Valid() {
				t.Errorf("GET %s: %s (%v)", loc, st.body, err)
			}
		})
	}
	wg.Wait()
}

// TestReplayPassesThrough: the scheduler's replay of a request that was
// marked async goes through the same middleware to the handler, once, and
// is not stored again.
func TestReplayPassesThrough(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{run: true})
	res := b.post(t, workPath+"gamma?q=1", "replay me", trigger.HeaderInvocationType, "Async", "Prefer", "respond-async",
		trigger.HeaderAsyncTaskID, "replayed", "X-Custom", "kept")
	if res.status != http.StatusAccepted {
		t.Fatalf("status %d %s", res.status, res.body)
	}
	c := b.nextCall(t)
	b.stopScheduler(t)
	if !c.Replay || c.Attempt.ID != "replayed" || c.Attempt.Number != 1 {
		t.Errorf("handler ran with attempt %+v (replay %t)", c.Attempt, c.Replay)
	}
	if c.Method != http.MethodPost || c.URL != "/work/gamma?q=1" || c.Name != "gamma" || c.Body != "replay me" {
		t.Errorf("replayed %s %s name=%q body=%q", c.Method, c.URL, c.Name, c.Body)
	}
	if c.Header.Get("X-Custom") != "kept" || c.Header.Get(trigger.HeaderRequestID) != "replayed" || c.Header.Get(invoke.HeaderRetryCount) != "0" {
		t.Errorf("replayed headers %v", c.Header)
	}
	tasks := b.stored(t)
	if len(tasks) != 1 {
		t.Fatalf("%d tasks stored, want 1", len(tasks))
	}
	if tk := tasks[0]; tk.Status != task.Succeeded || tk.Attempts != 1 || tk.Response == nil || tk.Response.StatusCode != http.StatusCreated {
		t.Errorf("task %s after its replay: attempts %d, response %+v", tk.Status, tk.Attempts, tk.Response)
	}
	select {
	case c := <-b.calls:
		t.Errorf("the handler ran again: %+v", c)
	default:
	}
}

// TestAcceptedIsDurable: what was answered 202 is in the database file
// when it is opened again.
func TestAcceptedIsDurable(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "offload.db")
	q, err := queue.Open(path, &queue.Options{Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	sched, err := invoke.New(q, &invoke.Options{Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	tr := trigger.New(sched, nil)
	b := &testBundle{q: q, sched: sched}
	mux := http.NewServeMux()
	mux.Handle(workPath+"{name}", tr.Async(target, http.NotFoundHandler(), nil))
	b.srv = httptest.NewServer(mux)
	defer b.srv.Close()
	b.client = b.srv.Client()

	var ids []string
	for i := range 20 {
		ids = append(ids, b.accept(t, strconv.Itoa(i)))
	}
	b.srv.Close()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	q2, err := queue.Open(path, &queue.Options{Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	b.q = q2
	var got []string
	for _, tk := range b.stored(t) {
		got = append(got, tk.ID)
	}
	// IDs made in one millisecond do not sort by time: compare as sets.
	slices.Sort(got)
	slices.Sort(ids)
	if !slices.Equal(got, ids) {
		t.Errorf("after reopening: %q, want %q", got, ids)
	}
	if err := q2.Check(); err != nil {
		t.Error(err)
	}
}
