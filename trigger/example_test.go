package trigger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

// One route serves both sync and async calls: a request with
// X-Fc-Invocation-Type: Async is stored, answered 202 at once, and run
// later by the scheduler against the same handler.
func ExampleTrigger_Async() {
	dir, err := os.MkdirTemp("", "offload-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	db, err := queue.Open(filepath.Join(dir, "offload.db"), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	sched, err := invoke.New(db, &invoke.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	tr := trigger.New(sched, &trigger.Options{TaskPath: "/tasks/"})

	ran := make(chan string, 1)
	report := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a, ok := task.FromContext(r.Context()); ok {
			ran <- fmt.Sprintf("built %s as task %s, attempt %d", r.PathValue("name"), a.ID, a.Number)
		}
		fmt.Fprintf(w, "report %s built\n", r.PathValue("name"))
	})
	mux := http.NewServeMux()
	mux.Handle("POST /reports/{name}", tr.Async("report", report, &invoke.Policy{Concurrency: 2}))
	mux.Handle("/tasks/", http.StripPrefix("/tasks", trigger.TaskAPI(db, nil)))

	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error)
	go func() { stopped <- sched.Run(ctx) }()
	srv := httptest.NewServer(mux)
	defer srv.Close()

	// A sync call: the handler answers.
	res, err := srv.Client().Post(srv.URL+"/reports/weekly", "text/plain", nil)
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Printf("%s: %s", res.Status, body)

	// An async call, with a task ID of the caller's choosing.
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/reports/monthly", nil)
	req.Header.Set("X-Fc-Invocation-Type", "Async")
	req.Header.Set("X-Fc-Async-Task-Id", "monthly_2026_11")
	res, err = srv.Client().Do(req)
	if err != nil {
		log.Fatal(err)
	}
	body, _ = io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Println(res.Status, res.Header.Get("Location"))
	fmt.Print(string(body))

	fmt.Println(<-ran)
	cancel()
	<-stopped // Run returns once in-flight attempts are recorded
	t, err := task.Query(context.Background(), db, "monthly_2026_11")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(t.Status, t.Attempts, string(t.Response.Body))
	// Output:
	// 200 OK: report weekly built
	// 202 Accepted /tasks/monthly_2026_11
	// {"id":"monthly_2026_11","status":"Enqueued"}
	// built monthly as task monthly_2026_11, attempt 1
	// Succeeded 1 report monthly built
}

// The task API shows, lists, stops and retries tasks. Mount it behind the
// application's own authentication.
func ExampleTaskAPI() {
	dir, err := os.MkdirTemp("", "offload-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := queue.Open(filepath.Join(dir, "offload.db"), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	sched, err := invoke.New(db, nil)
	if err != nil {
		log.Fatal(err)
	}
	tr := trigger.New(sched, &trigger.Options{TaskPath: "/tasks/"})

	mux := http.NewServeMux()
	mux.Handle("POST /exports", tr.Async("export", http.NotFoundHandler(), nil))
	mux.Handle("/tasks/", http.StripPrefix("/tasks", trigger.TaskAPI(db, &trigger.APIOptions{
		RedactHeaders: []string{"X-Api-Key"},
	})))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	call := func(method, path string, header ...string) []byte {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		res, err := srv.Client().Do(req)
		if err != nil {
			log.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return body
	}
	// Accept a task that may start in an hour.
	call("POST", "/exports", "X-Fc-Invocation-Type", "Async", "X-Fc-Async-Delay", "3600",
		"X-Fc-Async-Task-Id", "nightly", "X-Api-Key", "secret")

	var v struct {
		ID      string      `json:"id"`
		Target  string      `json:"target"`
		Status  task.Status `json:"status"`
		Request struct {
			Headers map[string][]string `json:"headers"`
		} `json:"request"`
	}
	_ = json.Unmarshal(call("GET", "/tasks/nightly"), &v)
	fmt.Println(v.ID, v.Target, v.Status, v.Request.Headers["X-Api-Key"])

	_ = json.Unmarshal(call("POST", "/tasks/nightly/stop"), &v)
	fmt.Println("after stop:", v.Status)

	var list struct {
		Tasks []struct{ ID string } `json:"tasks"`
	}
	_ = json.Unmarshal(call("GET", "/tasks/?status=Stopped&target=export"), &list)
	fmt.Println("stopped:", list.Tasks)

	_ = json.Unmarshal(call("POST", "/tasks/nightly/retry"), &v)
	fmt.Println("after retry:", v.Status)

	fmt.Printf("%s", call("GET", "/tasks/unknown"))
	// Output:
	// nightly export Enqueued [[redacted]]
	// after stop: Stopped
	// stopped: [{nightly}]
	// after retry: Enqueued
	// {"code":"TaskNotFound","message":"no task has that id"}
}
