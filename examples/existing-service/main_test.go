package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const rows = 20000

type bundle struct {
	base   string
	client *http.Client
	db     *queue.Queue
}

// setup serves the service over httptest with its scheduler running.
func setup(t *testing.T) *bundle {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	db, err := queue.Open(filepath.Join(t.TempDir(), "offload.db"), &queue.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApp(db, demoUsers, rows, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.sched.Run(ctx) }()
	srv := httptest.NewServer(a.handler)
	t.Cleanup(func() {
		srv.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("scheduler: %v", err)
		}
		if err := db.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return &bundle{base: srv.URL, client: srv.Client(), db: db}
}

type response struct {
	status int
	header http.Header
	body   string
}

// as is a caller: a user's token and a tenant.
type as struct{ token, tenant string }

var (
	alice       = as{"alice-token", "acme"}
	aliceGlobex = as{"alice-token", "globex"}
	bob         = as{"bob-token", "acme"}
	ops         = as{"ops-token", "acme"}
)

func (b *bundle) do(t *testing.T, who as, method, path string, header http.Header) response {
	t.Helper()
	req, err := http.NewRequest(method, b.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if who.token != "" {
		req.Header.Set("Authorization", "Bearer "+who.token)
	}
	if who.tenant != "" {
		req.Header.Set("X-Tenant-Id", who.tenant)
	}
	res, err := b.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{res.StatusCode, res.Header, string(body)}
}

var async = http.Header{"X-Fc-Invocation-Type": {"Async"}}

// submit sends an async request and returns the task ID.
func (b *bundle) submit(t *testing.T, who as, path string, extra ...string) string {
	t.Helper()
	h := async.Clone()
	for i := 0; i+1 < len(extra); i += 2 {
		h.Set(extra[i], extra[i+1])
	}
	res := b.do(t, who, http.MethodPost, path, h)
	var acc struct{ ID string }
	if res.status != http.StatusAccepted || json.Unmarshal([]byte(res.body), &acc) != nil ||
		res.header.Get("Location") != "/tasks/"+acc.ID {
		t.Fatalf("POST %s: %d %s", path, res.status, res.body)
	}
	return acc.ID
}

type taskView struct {
	ID            string
	Target        string
	Status        string
	ReturnPayload string
	Request       struct{ Headers map[string][]string }
}

// wait polls the task API, as the task's owner, until the task finishes.
func (b *bundle) wait(t *testing.T, who as, id string) taskView {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(time.Minute)
	for {
		res := b.do(t, who, http.MethodGet, "/tasks/"+id, nil)
		var tk taskView
		if res.status != http.StatusOK || json.Unmarshal([]byte(res.body), &tk) != nil {
			t.Fatalf("GET /tasks/%s: %d %s", id, res.status, res.body)
		}
		if task.Status(tk.Status).Terminal() {
			return tk
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s still %s after a minute", id, tk.Status)
		}
		<-tick.C
	}
}

// TestAuth: the service's middleware guards every route but /healthz.
func TestAuth(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, tc := range []struct {
		name   string
		who    as
		method string
		path   string
		want   int
	}{
		{"health needs no token", as{}, "GET", "/healthz", 200},
		{"no token", as{"", "acme"}, "POST", "/reports/daily", 401},
		{"unknown token", as{"mallory-token", "acme"}, "POST", "/reports/daily", 401},
		{"not a tenant of the user", as{"bob-token", "globex"}, "POST", "/reports/daily", 403},
		{"no tenant", as{"alice-token", ""}, "GET", "/me/jobs", 403},
		{"task API without a token", as{}, "GET", "/tasks/", 401},
		{"unknown report", alice, "POST", "/reports/weekly", 404},
		{"sync report", alice, "POST", "/reports/monthly", 200},
	} {
		if res := b.do(t, tc.who, tc.method, tc.path, nil); res.status != tc.want {
			t.Errorf("%s: %s %s answered %d %s, want %d", tc.name, tc.method, tc.path, res.status, res.body, tc.want)
		}
	}
	// An async request is refused by the same middleware: nothing stored.
	if res := b.do(t, as{"", "acme"}, "POST", "/reports/daily", async); res.status != 401 {
		t.Errorf("async without a token: %d", res.status)
	}
	if page, err := task.List(context.Background(), b.db, task.Filter{}); err != nil || len(page.Tasks) != 0 {
		t.Errorf("tasks stored: %v %v", page, err)
	}
}

// TestAsyncCarriesContext: async requests through the chi route and the
// ServeMux pattern run with the user, the tenant and the route parameters
// that the middleware and routers gave them, and answer what a sync call
// answers.
func TestAsyncCarriesContext(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, tc := range []struct {
		who  as
		path string
		want []string
	}{
		{alice, "/reports/monthly", []string{"# monthly sales report of acme, requested by alice\n", "\n2025-12,"}},
		{bob, "/reports/daily", []string{"# daily sales report of acme, requested by bob\n", "\n2025-12-31,"}},
		{alice, "/exports/csv", []string{"# customers of acme, exported by alice\n", "id,name,email\n", "@acme.example"}},
		{aliceGlobex, "/exports/json", []string{`"tenant":"globex"`, `"exportedBy":"alice"`, "@globex.example"}},
	} {
		// A client cannot pass for another user: the middleware sets the
		// header that records the owner.
		id := b.submit(t, tc.who, tc.path, headerUser, "ops")
		tk := b.wait(t, tc.who, id)
		if tk.Status != "Succeeded" {
			t.Fatalf("%s: %s: %s", tc.path, tk.Status, tk.ReturnPayload)
		}
		for _, w := range tc.want {
			if !strings.Contains(tk.ReturnPayload, w) {
				t.Errorf("%s: result lacks %q:\n%.300s", tc.path, w, tk.ReturnPayload)
			}
		}
		sync := b.do(t, tc.who, http.MethodPost, tc.path, nil)
		if sync.status != http.StatusOK || sync.body != tk.ReturnPayload {
			t.Errorf("%s: the sync call answered %d and differs from the async result", tc.path, sync.status)
		}
		// The stored request holds the owner, and not the token.
		stored, err := task.Query(context.Background(), b.db, id)
		if err != nil {
			t.Fatal(err)
		}
		user := strings.TrimSuffix(tc.who.token, "-token")
		if got := stored.Request.Header.Get(headerUser); got != user {
			t.Errorf("%s: stored owner %q, want %q", tc.path, got, user)
		}
		if got := stored.Request.Header.Get("Authorization"); got != "" {
			t.Errorf("%s: the bearer token was stored: %q", tc.path, got)
		}
	}
}

// TestTaskAPIAuthorize: the task API answers a user only about their own
// tasks in the current tenant; listing everything is for admins.
func TestTaskAPIAuthorize(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Delayed by a minute, so that it is still waiting when stopped.
	id := b.submit(t, alice, "/reports/daily", "X-Fc-Async-Delay", "60")

	for _, tc := range []struct {
		name   string
		who    as
		method string
		path   string
		want   int
	}{
		{"owner reads", alice, "GET", "/tasks/" + id, 200},
		{"another user reads", bob, "GET", "/tasks/" + id, 403},
		{"the owner in another tenant", aliceGlobex, "GET", "/tasks/" + id, 403},
		{"another user stops", bob, "POST", "/tasks/" + id + "/stop", 403},
		{"another user retries", bob, "POST", "/tasks/" + id + "/retry", 403},
		{"a user lists every task", alice, "GET", "/tasks/", 403},
		{"a user counts every task", alice, "GET", "/tasks/-/counts", 403},
		{"unknown task", alice, "GET", "/tasks/01M8A5JMZP442HFYP7HK6MA4SD", 404},
		{"admin reads", ops, "GET", "/tasks/" + id, 200},
		{"admin lists", ops, "GET", "/tasks/?limit=10", 200},
		{"owner stops", alice, "POST", "/tasks/" + id + "/stop", 200},
	} {
		res := b.do(t, tc.who, tc.method, tc.path, nil)
		if res.status != tc.want {
			t.Errorf("%s: %s %s answered %d %s, want %d", tc.name, tc.method, tc.path, res.status, res.body, tc.want)
		}
		if res.status == 403 && !strings.Contains(res.body, `"code":"Forbidden"`) {
			t.Errorf("%s: 403 body %s", tc.name, res.body)
		}
	}
	if tk := b.wait(t, alice, id); tk.Status != "Stopped" {
		t.Errorf("after the owner's stop: %s", tk.Status)
	}
}

// TestMyJobs: the service's own endpoints list and show the caller's jobs
// with task.List and task.Query.
func TestMyJobs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	mine := []string{b.submit(t, alice, "/reports/monthly"), b.submit(t, alice, "/exports/json")}
	bobs := b.submit(t, bob, "/reports/daily")
	globex := b.submit(t, aliceGlobex, "/exports/csv")
	for _, id := range mine {
		b.wait(t, alice, id)
	}
	b.wait(t, bob, bobs)
	b.wait(t, aliceGlobex, globex)

	type jobs struct {
		User, Tenant string
		Jobs         []job
	}
	list := func(who as, query string) jobs {
		t.Helper()
		res := b.do(t, who, "GET", "/me/jobs"+query, nil)
		var js jobs
		if res.status != 200 || json.Unmarshal([]byte(res.body), &js) != nil {
			t.Fatalf("/me/jobs%s: %d %s", query, res.status, res.body)
		}
		return js
	}
	ids := func(js jobs) []string {
		var out []string
		for _, j := range js.Jobs {
			out = append(out, j.ID)
		}
		return out
	}

	got := list(alice, "")
	// Newest first.
	if want := []string{mine[1], mine[0]}; !slices.Equal(ids(got), want) || got.User != "alice" || got.Tenant != "acme" {
		t.Errorf("alice's jobs in acme: %v, want %v", ids(got), want)
	}
	for _, j := range got.Jobs {
		if j.Status != task.Succeeded || j.Result != "" || j.TaskURL != "/tasks/"+j.ID || j.Finished == nil {
			t.Errorf("job %+v", j)
		}
	}
	if g := ids(list(bob, "")); !slices.Equal(g, []string{bobs}) {
		t.Errorf("bob's jobs: %v, want [%s]", g, bobs)
	}
	if g := ids(list(aliceGlobex, "")); !slices.Equal(g, []string{globex}) {
		t.Errorf("alice's jobs in globex: %v, want [%s]", g, globex)
	}
	if g := ids(list(alice, "?status=Failed")); len(g) != 0 {
		t.Errorf("alice's failed jobs: %v", g)
	}
	if res := b.do(t, alice, "GET", "/me/jobs?status=Bogus", nil); res.status != 400 {
		t.Errorf("bad status filter: %d", res.status)
	}

	// One job, with its result.
	res := b.do(t, alice, "GET", "/me/jobs/"+mine[0], nil)
	var j job
	if res.status != 200 || json.Unmarshal([]byte(res.body), &j) != nil || j.Kind != "report" ||
		j.Request != "POST /reports/monthly" || !strings.HasPrefix(j.Result, "# monthly sales report of acme, requested by alice") {
		t.Errorf("/me/jobs/%s: %d %.300s", mine[0], res.status, res.body)
	}
	// Another user's job is not found, as an unknown one.
	for _, path := range []string{"/me/jobs/" + mine[0], "/me/jobs/01M8A5JMZP442HFYP7HK6MA4SD", "/me/jobs/not-an-id!"} {
		if res := b.do(t, bob, "GET", path, nil); res.status != 404 {
			t.Errorf("bob GET %s: %d %s", path, res.status, res.body)
		}
	}
}

// TestRun runs the program as main does, serves one async report, and
// stops it as SIGINT would.
func TestRun(t *testing.T) {
	t.Parallel()
	ready := make(chan string, 1)
	cfg := config{
		addr:     "127.0.0.1:0",
		dbPath:   filepath.Join(t.TempDir(), "offload.db"),
		rows:     rows,
		log:      slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		onListen: func(base string) { ready <- base },
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out strings.Builder
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, &out) }()
	var base string
	select {
	case base = <-ready:
	case err := <-done:
		t.Fatalf("run: %v", err)
	}
	b := &bundle{base: base, client: &http.Client{Timeout: 10 * time.Second}}
	id := b.submit(t, alice, "/reports/monthly")
	if tk := b.wait(t, alice, id); tk.Status != "Succeeded" || !strings.Contains(tk.ReturnPayload, "requested by alice") {
		t.Errorf("task %s: %.200s", tk.Status, tk.ReturnPayload)
	}
	b.client.CloseIdleConnections()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if !strings.Contains(out.String(), "curl -s -X POST -H 'Authorization: Bearer alice-token' -H 'X-Tenant-Id: acme' "+base+"/reports/monthly") {
		t.Errorf("printed:\n%s", out.String())
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
