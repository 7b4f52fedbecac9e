package invoke_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// requestView is what a handler can see of a request, apart from its
// context and the headers the scheduler adds.
type requestView struct {
	Method, URL, EscapedPath, RawQuery string
	Proto                              string
	Host, RemoteAddr, RequestURI       string
	Header                             http.Header
	Body                               []byte
	ContentLength                      int64
	Pattern, PathName, PathRest        string
	QueryTags                          []string
	HasTLS                             bool
}

func viewOf(r *http.Request, body []byte) requestView {
	h := r.Header.Clone()
	h.Del(invoke.HeaderRequestID)
	h.Del(invoke.HeaderRetryCount)
	return requestView{
		Method: r.Method, URL: r.URL.String(), EscapedPath: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery,
		Proto: r.Proto, Host: r.Host, RemoteAddr: r.RemoteAddr, RequestURI: r.RequestURI,
		Header: h, Body: body, ContentLength: r.ContentLength,
		Pattern: r.Pattern, PathName: r.PathValue("name"), PathRest: r.PathValue("rest"),
		QueryTags: r.URL.Query()["tag"], HasTLS: r.TLS != nil,
	}
}

// A replayed handler sees what it would have seen called synchronously:
// method, URL and query, host, headers, body, remote address, route pattern
// and path values, plus the task's ID and retry count in headers and the
// attempt in its context.
func TestReplayFidelity(t *testing.T) {
	t.Parallel()
	const pattern = "POST /videos/{name}/transcode/{rest...}"
	body := bytes.Repeat([]byte("frame;"), 1000)

	// The original request goes through a real server and ServeMux.
	var original requestView
	var stored *reqcodec.Request
	mux := http.NewServeMux()
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Error(err)
		}
		original = viewOf(r, b)
		stored = storeRequest(r, nil, b)
		w.WriteHeader(http.StatusAccepted)
	})
	srv := httptest.NewServer(mux)
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/videos/cat%20v2.mp4/transcode/hd/fast?quality=high&tag=x&tag=y%26z", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "media.example.com"
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer secret")
	req.Header.Add("X-Multi", "one")
	req.Header.Add("X-Multi", "two")
	req.Header.Set(invoke.HeaderRequestID, "spoofed-by-the-client")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	srv.Close()
	if resp.StatusCode != http.StatusAccepted || stored == nil {
		t.Fatalf("original request answered %d", resp.StatusCode)
	}

	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		type replay struct {
			view    requestView
			id, rc  string
			attempt task.Attempt
			ok      bool
			ctxErr  error
		}
		got := make(chan replay, 1)
		// The target is the handler behind the mux: path values come from
		// the stored request, not from routing again.
		b.register("transcode", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			data, err := io.ReadAll(r.Body)
			if err != nil {
				t.Error(err)
			}
			a, ok := task.FromContext(r.Context())
			got <- replay{
				view: viewOf(r, data), id: r.Header.Get(invoke.HeaderRequestID), rc: r.Header.Get(invoke.HeaderRetryCount),
				attempt: a, ok: ok, ctxErr: r.Context().Err(),
			}
		}), nil)
		b.start()
		id := b.enqueue(&queue.Job{Target: "transcode", Request: stored})
		r := <-got
		synctest.Wait()
		tk := b.wantStatus(id, task.Succeeded, 1)

		if !reflect.DeepEqual(r.view, original) {
			t.Errorf("replay saw\n%+v\nthe original handler saw\n%+v", r.view, original)
		}
		if r.view.PathName != "cat v2.mp4" || r.view.PathRest != "hd/fast" || r.view.Pattern != pattern {
			t.Errorf("path values %q %q, pattern %q", r.view.PathName, r.view.PathRest, r.view.Pattern)
		}
		if r.view.Host != "media.example.com" || !strings.HasPrefix(r.view.RemoteAddr, "127.0.0.1:") || !bytes.Equal(r.view.Body, body) {
			t.Errorf("host %q, remote %q, body of %d bytes", r.view.Host, r.view.RemoteAddr, len(r.view.Body))
		}
		if r.id != id || r.rc != "0" {
			t.Errorf("%s = %q, %s = %q; want %q and \"0\"", invoke.HeaderRequestID, r.id, invoke.HeaderRetryCount, r.rc, id)
		}
		want := task.Attempt{ID: id, Target: "transcode", Number: 1, CreatedAt: tk.CreatedAt}
		if !r.ok || !r.attempt.CreatedAt.Equal(want.CreatedAt) || r.attempt.ID != want.ID || r.attempt.Target != want.Target || r.attempt.Number != 1 {
			t.Errorf("task.FromContext = %+v, %v; want %+v", r.attempt, r.ok, want)
		}
		if r.ctxErr != nil {
			t.Errorf("handler's context already done: %v", r.ctxErr)
		}
	})
}

// A body too large to keep inline is streamed from its blob file, on
// every attempt; an inline one is too.
func TestReplayBody(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		size int
		blob bool
	}{
		{"inline", 64 << 10, false},
		{"blob", 3<<20 + 17, true},
		{"empty", 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				b := setup(t, nil)
				body := make([]byte, tt.size)
				rand.Read(body)
				req := &reqcodec.Request{Method: http.MethodPut, RequestURI: "/upload", Proto: "HTTP/1.1", Host: "example.com", BodySize: int64(tt.size)}
				if tt.blob {
					blob, err := b.sched.CreateBlob()
					if err != nil {
						t.Fatal(err)
					}
					// Written in pieces, as the trigger streams it.
					for chunk := range slices.Chunk(body, 32<<10) {
						if _, err := blob.Write(chunk); err != nil {
							t.Fatal(err)
						}
					}
					if err := blob.Close(); err != nil {
						t.Fatal(err)
					}
					req.Blob = blob.Name()
				} else {
					req.Body = body
				}
				type seen struct {
					sum    [32]byte
					n      int64
					length int64
				}
				got := make(chan seen, 2)
				b.register("upload", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					h := sha256.New()
					n, err := io.Copy(h, r.Body)
					if err != nil {
						t.Error(err)
					}
					got <- seen{sum: [32]byte(h.Sum(nil)), n: n, length: r.ContentLength}
					if a, _ := task.FromContext(r.Context()); a.Number == 1 {
						w.WriteHeader(http.StatusBadGateway) // read it again on the retry
					}
				}), &invoke.Policy{BackoffInitial: time.Second})
				b.start()
				id := b.enqueue(&queue.Job{Target: "upload", Request: req})
				want := sha256.Sum256(body)
				for n := 1; n <= 2; n++ {
					s := <-got
					if s.sum != want || s.n != int64(tt.size) || s.length != int64(tt.size) {
						t.Errorf("attempt %d read %d bytes (ContentLength %d), sum match %v; want %d", n, s.n, s.length, s.sum == want, tt.size)
					}
				}
				synctest.Wait()
				b.wantStatus(id, task.Succeeded, 2)
			})
		})
	}
}

// A body that is lost for good (its blob file gone) makes the task
// Invalid; one that cannot be read for now is retried like a failed
// attempt, and read when the file system lets it.
func TestReplayBodyUnreadable(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		read := make(chan string, 2)
		b.register("upload", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				t.Error(err)
			}
			read <- string(body)
		}), &invoke.Policy{BackoffInitial: time.Second})
		blob := func(body string) (req *reqcodec.Request, path string) {
			bl, err := b.sched.CreateBlob()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(bl, body); err != nil {
				t.Fatal(err)
			}
			if err := bl.Close(); err != nil {
				t.Fatal(err)
			}
			req = &reqcodec.Request{Method: http.MethodPut, RequestURI: "/upload", Proto: "HTTP/1.1", Blob: bl.Name(), BodySize: int64(len(body))}
			return req, filepath.Join(b.q.Path()+".blobs", bl.Name())
		}
		gone, gonePath := blob("gone")
		if err := os.Remove(gonePath); err != nil {
			t.Fatal(err)
		}
		// A link to itself cannot be opened (ELOOP), until it is put right.
		later, laterPath := blob("later")
		if err := os.Rename(laterPath, laterPath+".aside"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Base(laterPath), laterPath); err != nil {
			t.Fatal(err)
		}
		b.start()
		goneID := b.enqueue(&queue.Job{Target: "upload", Request: gone})
		laterID := b.enqueue(&queue.Job{Target: "upload", Request: later})
		synctest.Wait()
		if tk := b.wantStatus(goneID, task.Invalid, 1); !strings.Contains(tk.LastError, "lost") {
			t.Errorf("task whose blob is gone: last error %q", tk.LastError)
		}
		if tk := b.wantStatus(laterID, task.Retrying, 1); !strings.Contains(tk.LastError, "symbolic links") {
			t.Errorf("task whose blob cannot be opened: last error %q", tk.LastError)
		}
		if err := os.Rename(laterPath+".aside", laterPath); err != nil {
			t.Fatal(err)
		}
		if got := <-read; got != "later" {
			t.Errorf("the retry read %q", got)
		}
		synctest.Wait()
		b.wantStatus(laterID, task.Succeeded, 2)
		// The consistency check at cleanup rightly reports a missing blob:
		// put it back.
		if err := os.WriteFile(gonePath, []byte("gone"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
}

type userKey struct{}

// Capture keeps request-scoped values at acceptance, and Restore puts them
// in the replayed handler's context, which still carries the attempt.
func TestCaptureRestore(t *testing.T) {
	t.Parallel()
	capture := func(r *http.Request) map[string]string {
		user, _ := r.Context().Value(userKey{}).(string)
		return map[string]string{"user": user, "tenant": r.Header.Get("X-Tenant")}
	}
	restore := func(ctx context.Context, values map[string]string) context.Context {
		return context.WithValue(ctx, userKey{}, values["user"]+"@"+values["tenant"])
	}
	for _, tt := range []struct {
		name string
		opts invoke.Options
		want any
	}{
		{"capture and restore", invoke.Options{Capture: capture, Restore: restore}, "alice@acme"},
		{"no restore", invoke.Options{Capture: capture}, nil},
		{"no capture", invoke.Options{Restore: restore}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				b := setup(t, &tt.opts)
				type seen struct {
					user    any
					attempt task.Attempt
				}
				got := make(chan seen, 1)
				b.register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					a, _ := task.FromContext(r.Context())
					got <- seen{r.Context().Value(userKey{}), a}
				}), nil)
				b.start()

				// What an authentication middleware left in the context.
				orig := httptest.NewRequest(http.MethodPost, "/work", nil)
				orig.Header.Set("X-Tenant", "acme")
				orig = orig.WithContext(context.WithValue(orig.Context(), userKey{}, "alice"))
				id := b.enqueue(&queue.Job{Target: "work", Request: storeRequest(orig, b.sched.Capture, nil)})
				s := <-got
				if s.user != tt.want {
					t.Errorf("handler's context has user %v; want %v", s.user, tt.want)
				}
				if s.attempt.ID != id {
					t.Errorf("task.FromContext after Restore: %+v", s.attempt)
				}
			})
		})
	}
}
