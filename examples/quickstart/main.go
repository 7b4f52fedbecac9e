// Command quickstart is the smallest complete offload service: one slow
// endpoint that can be called synchronously or asynchronously, and the task
// API to watch async calls run, retry and finish.
//
//	go run ./examples/quickstart
//
// It prints the curl commands to try, and the address of the dashboard
// page (/dashboard/), where tasks can be watched, stopped, retried and
// sent. POST /work simulates slow work: ?ms=N sleeps N milliseconds,
// reporting its progress; ?fail=K answers 500 on the first K attempts, so
// that you can watch retries with backoff.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	dbPath := flag.String("db", "offload-quickstart.db", "queue database file")
	flag.Parse()
	if err := run(*addr, *dbPath); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(addr, dbPath string) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	db, err := queue.Open(dbPath, &queue.Options{Logger: log})
	if err != nil {
		return err
	}
	defer db.Close()

	sched, err := invoke.New(db, &invoke.Options{Logger: log})
	if err != nil {
		return err
	}
	tr := trigger.New(sched, &trigger.Options{TaskPath: "/tasks/"})

	mux := http.NewServeMux()
	mux.Handle("POST /work", tr.Async("work", http.HandlerFunc(work), &invoke.Policy{
		Concurrency:    4,
		BackoffInitial: time.Second,
	}))
	// Mount the task API behind your own authentication in a real service.
	mux.Handle("/tasks/", http.StripPrefix("/tasks", trigger.TaskAPI(db, nil)))
	// The dashboard page over the task API; it too belongs behind your auth.
	mux.Handle("/dashboard/", http.StripPrefix("/dashboard", trigger.Dashboard("/tasks/", &trigger.DashboardOptions{
		TestPath: "/work?ms=5000",
	})))

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	schedDone := make(chan error, 1)
	go func() { schedDone <- sched.Run(context.Background()) }()
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	printTry(ln.Addr().String())

	sig, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var serveErr error // serving failed: shut down as for a signal, then report it
	select {
	case <-sig.Done():
	case serveErr = <-srvDone:
		log.Error("serving failed", "err", serveErr)
	}
	log.Info("shutting down")

	// Stop the scheduler first: while running tasks finish (up to 30 s),
	// new async requests are answered 503 with Retry-After and sync ones
	// are still served. Then stop serving, then close the queue (the
	// deferred db.Close). A task cut short goes back to the queue.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sched.Stop(ctx); err != nil {
		log.Warn("scheduler stop: running tasks handed back", "err", err)
	}
	if err := <-schedDone; err != nil {
		return err
	}
	httpCtx, httpCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer httpCancel()
	if err := srv.Shutdown(httpCtx); err != nil {
		return err
	}
	return serveErr
}

// work simulates slow work. It runs the same way for sync calls and for
// async replays; only a replay has a task in its context.
func work(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ms, _ := strconv.Atoi(q.Get("ms"))
	failFirst, _ := strconv.Atoi(q.Get("fail"))
	attempt := 1
	if a, ok := task.FromContext(r.Context()); ok {
		attempt = a.Number
	}
	n, _ := io.Copy(io.Discard, r.Body)
	if attempt <= failFirst {
		http.Error(w, fmt.Sprintf("failing attempt %d of the first %d", attempt, failFirst), http.StatusInternalServerError)
		return
	}
	// Sleep in ten steps, reporting progress (shown by the task API and the
	// dashboard; outside a replay these calls do nothing).
	log := task.Logger(r.Context())
	for i := range 10 {
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond / 10):
		case <-r.Context().Done():
			// Stopped, timed out or shutting down: give up; offload records why.
			log.Warn("giving up", "cause", context.Cause(r.Context()))
			http.Error(w, context.Cause(r.Context()).Error(), http.StatusServiceUnavailable)
			return
		}
		task.SetProgress(r.Context(), float64(i+1)*10, fmt.Sprintf("step %d of 10", i+1))
	}
	log.Info("done", "sleptMs", ms)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"message": "done", "attempt": attempt, "sleptMs": ms, "bodyBytes": n,
	})
}

func printTry(addr string) {
	base := "http://" + addr
	fmt.Printf(`offload quickstart listening on %s
dashboard: %[2]s/dashboard/

Try:
  # a sync call: the handler runs now and you wait for it
  curl -s -X POST '%[2]s/work?ms=500'

  # an async call: 202 at once, with the task id
  curl -si -X POST -H 'X-Fc-Invocation-Type: Async' '%[2]s/work?ms=3000&fail=1'

  # the task's status (use the id from the 202, or its Location header)
  curl -s %[2]s/tasks/<id>

  # the latest tasks
  curl -s '%[2]s/tasks/?limit=10'

Press Ctrl-C to stop.
`, base, base)
}
