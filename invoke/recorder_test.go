package invoke_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// The response of an attempt is recorded on the task: status, headers and
// body up to the cap, with what real handlers do to a ResponseWriter.
func TestResponseCapture(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("0123456789abcdef"), (invoke.DefaultResponseBodyCap+4096)/16)
	tests := []struct {
		name    string
		handler func(t *testing.T, w http.ResponseWriter, r *http.Request)
		status  task.Status
		code    int
		header  http.Header // must be present
		body    []byte
		size    int64
	}{
		{
			name: "status headers body",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Add("X-Multi", "a")
				w.Header().Add("X-Multi", "b")
				w.WriteHeader(http.StatusCreated)
				fmt.Fprint(w, `{"ok":true}`)
			},
			status: task.Succeeded, code: 201,
			header: http.Header{"Content-Type": {"application/json"}, "X-Multi": {"a", "b"}},
			body:   []byte(`{"ok":true}`), size: 11,
		},
		{
			name: "nothing written",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			},
			status: task.Succeeded, code: 200, size: 0,
		},
		{
			name: "WriteHeader twice: the first wins",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusAccepted)
				w.WriteHeader(http.StatusInternalServerError)
				fmt.Fprint(w, "queued")
			},
			status: task.Succeeded, code: 202, body: []byte("queued"), size: 6,
		},
		{
			name: "Write before WriteHeader implies 200",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, "partial")
				w.WriteHeader(http.StatusInternalServerError)
			},
			status: task.Succeeded, code: 200, body: []byte("partial"), size: 7,
		},
		{
			name: "1xx is not final",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Link", "</style.css>; rel=preload")
				w.WriteHeader(http.StatusEarlyHints)
				w.WriteHeader(http.StatusNotFound)
			},
			status: task.Failed, code: 404,
		},
		{
			name: "large body is capped and counted",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				for chunk := range slices.Chunk(big, 10000) {
					w.Write(chunk)
				}
			},
			status: task.Succeeded, code: 200, body: big[:invoke.DefaultResponseBodyCap], size: int64(len(big)),
		},
		{
			name: "streaming with ResponseController",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				rc := http.NewResponseController(w)
				deadline := time.Now().Add(time.Minute)
				for what, err := range map[string]error{
					"SetReadDeadline":  rc.SetReadDeadline(deadline),
					"SetWriteDeadline": rc.SetWriteDeadline(deadline),
					"EnableFullDuplex": rc.EnableFullDuplex(),
				} {
					if err != nil {
						t.Errorf("%s: %v", what, err)
					}
				}
				w.Header().Set("Content-Type", "text/event-stream")
				for i := range 3 {
					fmt.Fprintf(w, "data: %d\n\n", i)
					if err := rc.Flush(); err != nil {
						t.Errorf("Flush: %v", err)
					}
				}
				f, ok := w.(http.Flusher)
				if !ok {
					t.Error("the ResponseWriter is not an http.Flusher")
				} else {
					f.Flush()
				}
			},
			status: task.Succeeded, code: 200, header: http.Header{"Content-Type": {"text/event-stream"}},
			body: []byte("data: 0\n\ndata: 1\n\ndata: 2\n\n"), size: 27,
		},
		{
			// A client saw 200 and the headers set before the flush;
			// the error after it is only body.
			name: "a flush commits the status",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				fmt.Fprint(w, "data: 0\n\n")
				w.(http.Flusher).Flush()
				w.Header().Set("Retry-After", "3600")
				http.Error(w, "upstream gone", http.StatusServiceUnavailable)
			},
			status: task.Succeeded, code: 200, header: http.Header{"Content-Type": {"text/event-stream"}, "Retry-After": nil},
			body: []byte("data: 0\n\nupstream gone\n"), size: 23,
		},
		{
			name: "a flush before anything is written commits 200",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				if err := http.NewResponseController(w).Flush(); err != nil {
					t.Errorf("Flush: %v", err)
				}
				w.WriteHeader(http.StatusTooManyRequests)
			},
			status: task.Succeeded, code: 200,
		},
		{
			name: "Hijack fails clearly",
			handler: func(t *testing.T, w http.ResponseWriter, r *http.Request) {
				conn, _, err := http.NewResponseController(w).Hijack()
				if !errors.Is(err, invoke.ErrHijack) || conn != nil {
					t.Errorf("Hijack: %v, %v; want invoke.ErrHijack", conn, err)
				}
				if _, _, err := w.(http.Hijacker).Hijack(); !errors.Is(err, invoke.ErrHijack) {
					t.Errorf("http.Hijacker: %v; want invoke.ErrHijack", err)
				}
				http.Error(w, err.Error(), http.StatusNotImplemented)
			},
			status: task.Retrying, code: 501, body: []byte(invoke.ErrHijack.Error() + "\n"), size: int64(len(invoke.ErrHijack.Error()) + 1),
		},
	}
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		for i, tt := range tests {
			b.register(fmt.Sprintf("case-%d", i), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tt.handler(t, w, r)
			}), &invoke.Policy{BackoffInitial: time.Hour, BackoffMax: time.Hour})
		}
		b.start()
		ids := make([]string, len(tests))
		for i := range tests {
			ids[i] = b.enqueue(&queue.Job{Target: fmt.Sprintf("case-%d", i)})
		}
		synctest.Wait()
		for i, tt := range tests {
			tk := b.task(ids[i])
			if tk.Status != tt.status {
				t.Errorf("%s: task is %s (%q); want %s", tt.name, tk.Status, tk.LastError, tt.status)
			}
			r := tk.Response
			if r == nil {
				t.Errorf("%s: no response recorded", tt.name)
				continue
			}
			if r.StatusCode != tt.code || r.BodySize != tt.size || !bytes.Equal(r.Body, tt.body) {
				t.Errorf("%s: recorded %d with %d of %d body bytes (%.40q); want %d with %d of %d (%.40q)",
					tt.name, r.StatusCode, len(r.Body), r.BodySize, r.Body, tt.code, len(tt.body), tt.size, tt.body)
			}
			for k, vs := range tt.header {
				if got := r.Header[k]; strings.Join(got, ",") != strings.Join(vs, ",") {
					t.Errorf("%s: header %s = %q; want %q", tt.name, k, got, vs)
				}
			}
		}
	})
}

// Options.ResponseBodyCap bounds the recorded body; the rest is counted.
func TestResponseBodyCap(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, &invoke.Options{ResponseBodyCap: 16})
		b.register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for range 5 {
				fmt.Fprint(w, "0123456789")
			}
		}), nil)
		b.start()
		id := b.enqueue(&queue.Job{Target: "work"})
		synctest.Wait()
		r := b.wantStatus(id, task.Succeeded, 1).Response
		if r == nil || string(r.Body) != "0123456789012345" || r.BodySize != 50 {
			t.Errorf("recorded %+v; want the first 16 of 50 bytes", r)
		}
	})
}
