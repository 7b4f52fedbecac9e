// Command existing-service shows how to add offload to a service that
// already has its routing, authentication and tenants: the usual case.
//
//	go run ./examples/existing-service
//
// The service is a small reporting API. Its routes are a chi router
// (github.com/go-chi/chi/v5) with an http.ServeMux mounted inside it for the
// newer endpoints, behind an authentication middleware that maps a bearer
// token to a user and a tenant middleware that checks the X-Tenant-Id
// header against the user's tenants. Both put their result in the request
// context, as such middleware does.
//
// Adding offload takes four steps, each marked "offload:" below:
//
//  1. Wrap the slow handlers with the trigger: POST /reports/{kind} (a chi
//     route) and POST /exports/{format} (a ServeMux pattern) now also
//     answer 202 and a task ID to a request with X-Fc-Invocation-Type:
//     Async, and run later.
//  2. Carry the request context across the async hop with the
//     invoke.Options Capture/Restore pair. A replay calls the handler
//     directly, not through the router and middleware, so what they put in
//     the context (the user, the tenant, chi's URL parameters) is captured
//     when the request is accepted and restored before it runs.
//  3. Mount the task API behind the same authentication, with an Authorize
//     hook that lets users see and stop only their own tasks.
//  4. Use task.List and task.Query from the service's own code: GET /me/jobs
//     and GET /me/jobs/{id} show the user's jobs in the service's terms.
package main

import (
	"cmp"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

type config struct {
	addr   string
	dbPath string
	rows   int // sales rows per tenant that a report aggregates

	log      *slog.Logger      // nil: text to stderr
	onListen func(base string) // called once the server listens
}

func main() {
	var cfg config
	flag.StringVar(&cfg.addr, "addr", "127.0.0.1:8080", "address to listen on")
	flag.StringVar(&cfg.dbPath, "db", "offload-service.db", "queue database file")
	flag.IntVar(&cfg.rows, "rows", 50_000_000, "sales rows per tenant that a report aggregates")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "existing-service:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, stdout io.Writer) error {
	log := cmp.Or(cfg.log, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	db, err := queue.Open(cfg.dbPath, &queue.Options{Logger: log})
	if err != nil {
		return err
	}
	defer db.Close()
	app, err := newApp(db, demoUsers, cfg.rows, log)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: app.handler, ReadHeaderTimeout: 10 * time.Second}
	schedDone := make(chan error, 1)
	go func() { schedDone <- app.sched.Run(context.WithoutCancel(ctx)) }()
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	base := "http://" + ln.Addr().String()
	printTry(stdout, base)
	if cfg.onListen != nil {
		cfg.onListen(base)
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-srvDone:
	}
	log.Info("shutting down")
	// Stop the scheduler first: running jobs finish while new async
	// requests get 503 + Retry-After; then stop serving; then close the
	// queue (the deferred db.Close).
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := app.sched.Stop(sctx); err != nil {
		log.Warn("scheduler stop: running jobs were cancelled and will run again", "err", err)
	}
	<-schedDone
	if serveErr == nil {
		hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer hcancel()
		if err := srv.Shutdown(hctx); err != nil {
			log.Warn("http shutdown", "err", err)
		}
		serveErr = <-srvDone
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}

// app is the service: its routes and the scheduler behind them.
type app struct {
	db      *queue.Queue
	sched   *invoke.Scheduler
	users   map[string]*user // by name
	tokens  map[string]*user // by bearer token
	rows    int
	log     *slog.Logger
	handler http.Handler
}

func newApp(db *queue.Queue, users []*user, rows int, log *slog.Logger) (*app, error) {
	a := &app{db: db, users: map[string]*user{}, tokens: map[string]*user{}, rows: rows, log: log}
	for _, u := range users {
		a.users[u.Name] = u
		a.tokens[u.Token] = u
	}

	// offload step 2: carry what the middleware put in the context across
	// the async hop.
	sched, err := invoke.New(db, &invoke.Options{Logger: log, Capture: a.capture, Restore: a.restore})
	if err != nil {
		return nil, err
	}
	a.sched = sched
	tr := trigger.New(sched, &trigger.Options{TaskPath: "/tasks/"})
	slow := &invoke.Policy{Concurrency: 2, Timeout: 10 * time.Minute}

	// The service's routing as it was, with the offload lines added.
	r := chi.NewRouter()
	r.Use(middleware.Recoverer)
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	r.Group(func(r chi.Router) {
		r.Use(a.authenticate, a.requireTenant)

		// A chi route, with a chi URL parameter read by chi.URLParam.
		// offload step 1: wrap the handler. tr.Async registers it as the
		// target "report" and returns it wrapped by the middleware.
		//
		// chi.URLParam needs chi's route context, which a replay does not
		// have: capture and restore carry the parameters. (offload also
		// carries r.PathValue values, which chi sets, but not for a
		// parameter with a regexp such as this one: see the report.)
		r.Post("/reports/{kind:daily|monthly}", tr.Async("report", http.HandlerFunc(a.report), slow).ServeHTTP)

		// Newer endpoints on an http.ServeMux with Go 1.22 patterns, mounted
		// in the chi router. Path values (r.PathValue) are carried across
		// by offload itself.
		exports := http.NewServeMux()
		exports.Handle("POST /exports/{format}", tr.Async("export", http.HandlerFunc(a.export), slow))
		r.Mount("/exports", exports)

		// offload step 4: the service's own view of its jobs.
		r.Get("/me/jobs", a.myJobs)
		r.Get("/me/jobs/{id}", a.myJob)

		// offload step 3: the task API, behind the same authentication,
		// answering only about the caller's own tasks.
		r.Mount("/tasks", http.StripPrefix("/tasks", trigger.TaskAPI(db, &trigger.APIOptions{Authorize: a.authorizeTask})))
	})
	a.handler = r
	return a, nil
}

// user is an account of the service.
type user struct {
	Name    string
	Token   string
	Tenants []string
	Admin   bool // sees every task
}

// demoUsers are the accounts of the example.
var demoUsers = []*user{
	{Name: "alice", Token: "alice-token", Tenants: []string{"acme", "globex"}},
	{Name: "bob", Token: "bob-token", Tenants: []string{"acme"}},
	{Name: "ops", Token: "ops-token", Tenants: []string{"acme", "globex"}, Admin: true},
}

type ctxKey int

const (
	userKey ctxKey = iota
	tenantKey
)

// Headers that the service's own middleware sets on the request.
const (
	headerTenant = "X-Tenant-Id"
	// headerUser records the authenticated user on the request itself, so
	// that it is stored with an async request and task.Query shows it:
	// the task API's Authorize hook reads the owner from it. Any value a
	// client sends is replaced.
	headerUser = "X-Authenticated-User"
)

func userFrom(ctx context.Context) (*user, bool) {
	u, ok := ctx.Value(userKey).(*user)
	return u, ok
}

func tenantFrom(ctx context.Context) string {
	t, _ := ctx.Value(tenantKey).(string)
	return t
}

// authenticate is the service's existing auth middleware: a bearer token
// identifies the user, who goes into the context.
func (a *app) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		u := a.tokens[token]
		if !ok || u == nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="reports"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "a valid bearer token is required"})
			return
		}
		r.Header.Set(headerUser, u.Name)
		// The handlers need the user, not the token. offload stores an
		// async request with its headers: drop the token, so that it is not
		// written to the queue's disk.
		r.Header.Del("Authorization")
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey, u)))
	})
}

// requireTenant is the service's existing tenant middleware: the
// X-Tenant-Id header names one of the user's tenants.
func (a *app) requireTenant(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, _ := userFrom(r.Context())
		tenant := r.Header.Get(headerTenant)
		if u == nil || !slices.Contains(u.Tenants, tenant) {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "X-Tenant-Id must name one of your tenants"})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tenantKey, tenant)))
	})
}

// chiParamPrefix marks chi URL parameters among the captured values.
const chiParamPrefix = "chi:"

// capture runs when an async request is accepted, after the middleware:
// it keeps the user, the tenant and chi's URL parameters.
func (a *app) capture(r *http.Request) map[string]string {
	v := map[string]string{}
	if u, ok := userFrom(r.Context()); ok {
		v["user"] = u.Name
	}
	if t := tenantFrom(r.Context()); t != "" {
		v["tenant"] = t
	}
	if rc := chi.RouteContext(r.Context()); rc != nil {
		for i, k := range rc.URLParams.Keys {
			if k != "*" && i < len(rc.URLParams.Values) {
				v[chiParamPrefix+k] = rc.URLParams.Values[i]
			}
		}
	}
	return v
}

// restore runs before each replay with what capture kept, and puts it
// back where the handlers look for it. The user is looked up again, so a
// user deleted in between is not restored (and the handler refuses).
func (a *app) restore(ctx context.Context, v map[string]string) context.Context {
	if u, ok := a.users[v["user"]]; ok {
		ctx = context.WithValue(ctx, userKey, u)
	}
	if t := v["tenant"]; t != "" {
		ctx = context.WithValue(ctx, tenantKey, t)
	}
	rc := chi.NewRouteContext()
	for k, val := range v {
		if name, ok := strings.CutPrefix(k, chiParamPrefix); ok {
			rc.URLParams.Add(name, val)
		}
	}
	if len(rc.URLParams.Keys) > 0 {
		ctx = context.WithValue(ctx, chi.RouteCtxKey, rc)
	}
	return ctx
}

// owns reports whether the task was submitted by u in tenant: the
// middleware recorded both on the stored request.
func owns(t *task.Task, u *user, tenant string) bool {
	return t.Request.Header.Get(headerUser) == u.Name && t.Request.Header.Get(headerTenant) == tenant
}

// authorizeTask is the task API's Authorize hook: a user may read, stop
// and retry only the tasks they submitted in the current tenant; listing
// and counting every task is for admins (users have GET /me/jobs).
func (a *app) authorizeTask(r *http.Request, action, id string) error {
	u, _ := userFrom(r.Context())
	if u == nil {
		return errors.New("not authenticated")
	}
	if u.Admin {
		return nil
	}
	switch action {
	case "list", "counts":
		return errors.New("only admins list every task; see GET /me/jobs")
	}
	t, err := task.Query(r.Context(), a.db, id)
	if err != nil {
		return nil // unknown or malformed: the API answers 404 or 400 itself
	}
	if !owns(t, u, tenantFrom(r.Context())) {
		return errors.New("this task is not yours")
	}
	return nil
}

// job is a task as the service shows it to its users.
type job struct {
	ID       string         `json:"id"`
	Kind     string         `json:"kind"` // the target: report or export
	Request  string         `json:"request"`
	Status   task.Status    `json:"status"`
	Created  time.Time      `json:"created"`
	Finished *time.Time     `json:"finished,omitempty"`
	Progress *task.Progress `json:"progress,omitempty"`
	Error    string         `json:"error,omitempty"`
	Result   string         `json:"result,omitempty"` // only from GET /me/jobs/{id}
	TaskURL  string         `json:"taskUrl"`
}

func toJob(t *task.Task, withResult bool) job {
	j := job{ID: t.ID, Kind: t.Target, Request: t.Request.Method + " " + t.Request.URL, Status: t.Status,
		Created: t.CreatedAt, Progress: t.Progress, Error: t.LastError, TaskURL: "/tasks/" + t.ID}
	if !t.FinishedAt.IsZero() {
		j.Finished = &t.FinishedAt
	}
	if withResult && t.Status == task.Succeeded && t.Response != nil {
		j.Result = string(t.Response.Body)
	}
	return j
}

// maxScan bounds the tasks that one GET /me/jobs reads.
const maxScan = 1000

// myJobs lists the caller's jobs in the current tenant, newest first,
// with task.List. The queue indexes tasks by status and target, not by
// owner, so it reads pages of tasks and keeps the caller's, at most
// maxScan tasks per call; ?cursor= continues where the last call stopped.
// (A service with many users would record each task ID with its owner
// when the 202 is answered, and use task.Query.)
func (a *app) myJobs(w http.ResponseWriter, r *http.Request) {
	u, _ := userFrom(r.Context())
	tenant := tenantFrom(r.Context())
	q := r.URL.Query()
	f := task.Filter{Limit: task.MaxLimit, Cursor: q.Get("cursor")}
	if s := q.Get("status"); s != "" {
		st, err := task.ParseStatus(s)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		f.Statuses = []task.Status{st}
	}
	jobs := []job{}
	for scanned := 0; scanned < maxScan; {
		page, err := task.List(r.Context(), a.db, f)
		if errors.Is(err, task.ErrInvalidFilter) {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "the job store is unavailable"})
			return
		}
		for _, t := range page.Tasks {
			if owns(t, u, tenant) {
				jobs = append(jobs, toJob(t, false))
			}
		}
		scanned += len(page.Tasks)
		f.Cursor = page.Next
		if f.Cursor == "" {
			break
		}
	}
	writeJSON(w, http.StatusOK, struct {
		User       string `json:"user"`
		Tenant     string `json:"tenant"`
		Jobs       []job  `json:"jobs"`
		NextCursor string `json:"nextCursor,omitempty"`
	}{u.Name, tenant, jobs, f.Cursor})
}

// myJob shows one of the caller's jobs, with its result, by task.Query.
// Another user's task is answered 404, as an unknown one is.
func (a *app) myJob(w http.ResponseWriter, r *http.Request) {
	u, _ := userFrom(r.Context())
	t, err := task.Query(r.Context(), a.db, chi.URLParam(r, "id"))
	switch {
	case errors.Is(err, task.ErrNotFound), errors.Is(err, task.ErrInvalidID), err == nil && !owns(t, u, tenantFrom(r.Context())):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such job"})
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "the job store is unavailable"})
	default:
		writeJSON(w, http.StatusOK, toJob(t, true))
	}
}

// report aggregates the tenant's sales by day or by month into CSV. It
// reads the user, the tenant and chi's URL parameter from the context, the
// same whether it runs now (sync) or later (async, after restore).
func (a *app) report(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	u, ok := userFrom(ctx)
	tenant := tenantFrom(ctx)
	if !ok || tenant == "" {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "no user or tenant"})
		return
	}
	kind := chi.URLParam(r, "kind")
	layout := map[string]string{"daily": time.DateOnly, "monthly": "2006-01"}[kind]
	if layout == "" {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such report"})
		return
	}

	// The work: read every sale of the tenant (generated here, from a seed
	// of the tenant's name), total them per day, then per period.
	const days = 365
	var orders [days]int
	var cents [days]int64
	rng := tenantRand(tenant)
	for i := range a.rows {
		if i%(1<<18) == 0 {
			if err := ctx.Err(); err != nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": context.Cause(ctx).Error()})
				return
			}
			task.SetProgress(ctx, float64(i)*100/float64(a.rows), fmt.Sprintf("%d of %d sales read", i, a.rows))
		}
		d := rng.IntN(days)
		orders[d]++
		cents[d] += 500 + rng.Int64N(20000)
	}
	type total struct {
		orders int
		cents  int64
	}
	totals := map[string]*total{}
	var periods []string
	first := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for d := range days {
		p := first.AddDate(0, 0, d).Format(layout)
		t := totals[p]
		if t == nil {
			t = &total{}
			totals[p] = t
			periods = append(periods, p)
		}
		t.orders += orders[d]
		t.cents += cents[d]
	}

	w.Header().Set("Content-Type", "text/csv")
	w.Header().Set("X-Report-For", u.Name+"@"+tenant)
	fmt.Fprintf(w, "# %s sales report of %s, requested by %s\n", kind, tenant, u.Name)
	cw := csv.NewWriter(w)
	cw.Write([]string{"period", "orders", "revenue"})
	for _, p := range periods {
		t := totals[p]
		cw.Write([]string{p, strconv.Itoa(t.orders), fmt.Sprintf("%d.%02d", t.cents/100, t.cents%100)})
	}
	cw.Flush()
	task.SetProgress(ctx, 100, fmt.Sprintf("%d sales read", a.rows))
	a.logger(ctx).Info("report done", "kind", kind, "tenant", tenant, "periods", len(periods))
}

// logger is the task's logger in an async run (its records are kept with
// the task), and the service's otherwise.
func (a *app) logger(ctx context.Context) *slog.Logger {
	if _, async := task.FromContext(ctx); async {
		return task.Logger(ctx)
	}
	return a.log
}

// export writes the tenant's customer list as CSV or JSON; the format is
// a ServeMux path value.
func (a *app) export(w http.ResponseWriter, r *http.Request) {
	u, ok := userFrom(r.Context())
	tenant := tenantFrom(r.Context())
	if !ok || tenant == "" {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "no user or tenant"})
		return
	}
	type customer struct {
		ID    int    `json:"id"`
		Name  string `json:"name"`
		Email string `json:"email"`
	}
	rng := tenantRand(tenant)
	customers := make([]customer, 100)
	for i := range customers {
		name := fmt.Sprintf("customer-%04d", rng.IntN(10000))
		customers[i] = customer{ID: i + 1, Name: name, Email: name + "@" + tenant + ".example"}
	}
	w.Header().Set("X-Report-For", u.Name+"@"+tenant)
	switch r.PathValue("format") {
	case "json":
		writeJSON(w, http.StatusOK, map[string]any{"tenant": tenant, "exportedBy": u.Name, "customers": customers})
	case "csv":
		w.Header().Set("Content-Type", "text/csv")
		fmt.Fprintf(w, "# customers of %s, exported by %s\n", tenant, u.Name)
		cw := csv.NewWriter(w)
		cw.Write([]string{"id", "name", "email"})
		for _, c := range customers {
			cw.Write([]string{strconv.Itoa(c.ID), c.Name, c.Email})
		}
		cw.Flush()
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "format must be csv or json"})
	}
}

// tenantRand returns the same random sequence for the same tenant.
func tenantRand(tenant string) *rand.Rand {
	h := fnv.New64a()
	io.WriteString(h, tenant)
	return rand.New(rand.NewPCG(h.Sum64(), 2026))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func printTry(w io.Writer, base string) {
	fmt.Fprintf(w, `offload existing-service listening on %[1]s
Users: alice (tenants acme, globex), bob (acme), ops (admin); the token is <name>-token.

Try:
  # a report, synchronously as before: you wait for it
  curl -s -X POST -H 'Authorization: Bearer alice-token' -H 'X-Tenant-Id: acme' %[1]s/reports/monthly

  # the same, asynchronously: 202 and a task id at once
  curl -si -X POST -H 'Authorization: Bearer alice-token' -H 'X-Tenant-Id: acme' \
       -H 'X-Fc-Invocation-Type: Async' %[1]s/reports/daily

  # an export from the ServeMux part of the service
  curl -si -X POST -H 'Authorization: Bearer alice-token' -H 'X-Tenant-Id: acme' \
       -H 'X-Fc-Invocation-Type: Async' %[1]s/exports/csv

  # alice's jobs, and one with its result
  curl -s -H 'Authorization: Bearer alice-token' -H 'X-Tenant-Id: acme' %[1]s/me/jobs
  curl -s -H 'Authorization: Bearer alice-token' -H 'X-Tenant-Id: acme' %[1]s/me/jobs/<id>

  # the task API: alice may read her task; bob is refused (403)
  curl -s -H 'Authorization: Bearer alice-token' -H 'X-Tenant-Id: acme' %[1]s/tasks/<id>
  curl -s -H 'Authorization: Bearer bob-token' -H 'X-Tenant-Id: acme' %[1]s/tasks/<id>

Press Ctrl-C to stop.
`, base)
}
