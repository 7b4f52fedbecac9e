package trigger_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

// apiFuzzBundle is a service for the task API's fuzz targets: a few tasks
// in several statuses (the scheduler never runs, so they stay put but for
// what the fuzzed calls do), the API mounted as the documentation says,
// and a client that does not follow redirects. A panic in the API is
// answered 599 with its value, which no check allows.
func apiFuzzBundle(f *testing.F) (*testBundle, []string) {
	q := testutil.OpenQueue(f, &queue.Options{Logger: discard})
	sched, err := invoke.New(q, &invoke.Options{Logger: discard})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = sched.Stop(f.Context()) })
	b := &testBundle{q: q, sched: sched, calls: make(chan handlerCall, 1)}
	mux := http.NewServeMux()
	mux.Handle(workPath+"{name}", trigger.New(sched, &trigger.Options{TaskPath: taskPath}).Async(target, http.HandlerFunc(b.record), nil))
	api := http.StripPrefix(strings.TrimSuffix(taskPath, "/"), trigger.TaskAPI(q, nil))
	mux.Handle(taskPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				w.WriteHeader(599)
				fmt.Fprintf(w, "panic: %v", p)
			}
		}()
		api.ServeHTTP(w, r)
	}))
	b.srv = newTestServer(f, mux)
	b.client = b.srv.Client()
	b.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	ids := []string{
		b.accept(f, "generated"),
		b.accept(f, "a", trigger.HeaderAsyncTaskID, "job_a"),
		b.accept(f, "b", trigger.HeaderAsyncTaskID, "job_b", trigger.HeaderAsyncDelay, "60"),
		b.accept(f, "c", trigger.HeaderAsyncTaskID, "Job-C_1"),
	}
	if _, err := task.Stop(f.Context(), q, "job_b"); err != nil {
		f.Fatal(err)
	}
	return b, ids
}

// checkJSONError fails unless res is a JSON error body with a code.
func checkJSONError(t *testing.T, res *result) {
	t.Helper()
	if res.header.Get("Content-Type") != "application/json" || res.code() == "" {
		t.Fatalf("%d without a JSON error: %s", res.status, res.body)
	}
}

// FuzzTaskAPIQuery sends random query strings to the listing. It answers
// only 200 with a page of tasks that match the filter, or 400 with a JSON
// error: never 500, 503 or a panic.
//
//	go test -run '^$' -fuzz FuzzTaskAPIQuery ./trigger/
func FuzzTaskAPIQuery(f *testing.F) {
	for _, q := range []string{
		"",
		"status=Enqueued",
		"status=enqueued,Stopped&status=Succeeded",
		"status=Bogus",
		"status=",
		"status=,",
		"status=Enqueued&target=work&prefix=job_&order=asc&limit=100",
		"target=nope",
		"prefix=0",
		"prefix=01",
		"prefix=zz",
		"prefix=" + strings.Repeat("a", 129),
		"prefix=" + strings.Repeat("0", 27),
		"prefix=8",
		"prefix=%00",
		"order=asc",
		"order=up",
		"limit=0",
		"limit=1",
		"limit=101",
		"limit=-1",
		"limit=1e2",
		"limit=99999999999999999999",
		"since=2026-01-01T00:00:00Z",
		"since=0001-01-01T00:00:00Z",
		"since=1969-12-31T23:59:59.999Z",
		"until=1970-01-01T00:00:00Z",
		"until=9999-12-31T23:59:59.999999999Z",
		"since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
		"since=2026-01-01T00:00:00Z&until=2026-01-01T00:00:00Z",
		"since=yesterday",
		"since=2026-01-01T00:00:00+25:00",
		"cursor=abc",
		"cursor=",
		"cursor=aw",
		"cursor=a0FBQUFBQUFBQUFBQUFBQUE",
		"cursor=YwAAAA",
		"cursor=Y2pvYl9h",
		"cursor=%ff%fe",
		"cursor=a2pvYl9hAAAAAAAAAAAAAAAA&order=asc",
		"includePayload=true",
		"a=%zz&limit=%",
		"status=Enqueued;limit=5",
		"q=\xff&target=\xfe",
		"limit=5&limit=500",
	} {
		f.Add(q)
	}
	b, _ := apiFuzzBundle(f)
	f.Fuzz(func(t *testing.T, query string) {
		if strings.ContainsFunc(query, func(c rune) bool { return c <= ' ' || c == 0x7f || c == '#' }) {
			return // not a request line a client sends: net/http answers 400 itself
		}
		if len(query) > 64<<10 {
			return // past the server's header limit: net/http answers 431
		}
		req, err := http.NewRequest(http.MethodGet, b.srv.URL+taskPath+"?"+query, nil)
		if err != nil {
			return // not a URL a client can send
		}
		res := b.do(t, req)
		switch res.status {
		case http.StatusBadRequest:
			checkJSONError(t, res)
			return
		case http.StatusOK:
		default:
			t.Fatalf("?%s: status %d %s", query, res.status, res.body)
		}
		var page struct {
			Tasks []struct {
				ID     string      `json:"id"`
				Target string      `json:"target"`
				Status task.Status `json:"status"`
			} `json:"tasks"`
			NextCursor string `json:"nextCursor"`
		}
		if err := json.Unmarshal(res.body, &page); err != nil || page.Tasks == nil {
			t.Fatalf("?%s: 200 with %s (%v)", query, res.body, err)
		}
		// What was asked is what came back.
		values := req.URL.Query()
		limit := task.DefaultLimit
		fmt.Sscan(values.Get("limit"), &limit)
		if len(page.Tasks) > limit {
			t.Fatalf("?%s: %d tasks past the limit %d", query, len(page.Tasks), limit)
		}
		var statuses []task.Status
		for _, v := range values["status"] {
			for name := range strings.SplitSeq(v, ",") {
				s, _ := task.ParseStatus(strings.TrimSpace(name))
				statuses = append(statuses, s)
			}
		}
		for _, tk := range page.Tasks {
			if tgt := values.Get("target"); tgt != "" && tk.Target != tgt {
				t.Fatalf("?%s: task %s of target %q", query, tk.ID, tk.Target)
			}
			if p := values.Get("prefix"); p != "" && !strings.HasPrefix(strings.ToUpper(tk.ID), strings.ToUpper(p)) {
				t.Fatalf("?%s: task %s without the prefix", query, tk.ID)
			}
			if len(statuses) > 0 && !slices.Contains(statuses, tk.Status) {
				t.Fatalf("?%s: task %s is %s", query, tk.ID, tk.Status)
			}
		}
	})
}

// FuzzTaskAPIPath sends GET and POST requests with random task IDs in the
// path, raw or escaped. They are answered 200, 400, 404, 405 or 409 (or a
// redirect from the ServeMux, for a path it cleans before the API sees it), and
// every 400 and 409 is a JSON error.
//
//	go test -run '^$' -fuzz FuzzTaskAPIPath ./trigger/
func FuzzTaskAPIPath(f *testing.F) {
	b, ids := apiFuzzBundle(f)
	for _, id := range append(ids, strings.ToLower(ids[0]),
		"", "-", "-/counts", "nope", "job_", "JOB_A", "1abc", strings.Repeat("a", 128), strings.Repeat("a", 129),
		"..", ".", "../../etc/passwd", "a/b", "%2e%2e", "..%2f..%2fetc", "a%00b", "\x00", "\xff", "caf\u00e9",
		"a b", "a?b", "a#b", "a;b", "{id}", "{$}", "job_a/", "job_a/stop", "job_a//stop", "job_a/stop/x", "%", "%zz",
	) {
		for method := range uint8(2) {
			for suffix := range uint8(3) {
				f.Add(id, method, suffix, false)
				f.Add(id, method, suffix, true)
			}
		}
	}
	f.Fuzz(func(t *testing.T, id string, method, suffix uint8, raw bool) {
		if len(id) > 16<<10 {
			return // past the server's header limit: net/http answers 431
		}
		p := url.PathEscape(id)
		if raw {
			p = id
		}
		p = taskPath + p + []string{"", "/stop", "/retry"}[suffix%3]
		m := []string{http.MethodGet, http.MethodPost}[method%2]
		u, err := url.Parse(b.srv.URL + p)
		if err != nil || strings.ContainsFunc(u.RequestURI(), func(c rune) bool { return c <= ' ' || c == 0x7f }) {
			return // not a request a client can send
		}
		req, err := http.NewRequest(m, u.String(), nil)
		if err != nil {
			return
		}
		res := b.do(t, req)
		switch res.status {
		case http.StatusOK:
			if !json.Valid(res.body) {
				t.Fatalf("%s %s: 200 with %s", m, u.RequestURI(), res.body)
			}
		case http.StatusBadRequest, http.StatusConflict:
			checkJSONError(t, res)
		case http.StatusNotFound, http.StatusMethodNotAllowed:
			if res.header.Get("Content-Type") == "application/json" {
				checkJSONError(t, res)
			}
		case http.StatusMovedPermanently, http.StatusTemporaryRedirect:
			// The ServeMux redirects a path that is not clean to the clean
			// one before any handler runs.
			if clean := cleanPath(u.Path); clean == u.Path {
				t.Fatalf("%s %s: %d to %s for a clean path", m, u.RequestURI(), res.status, res.header.Get("Location"))
			}
		default:
			t.Fatalf("%s %s: status %d %s", m, u.RequestURI(), res.status, bytes.TrimSpace(res.body))
		}
	})
}

// cleanPath is the ServeMux's: path.Clean, keeping a trailing slash.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}
