package invoke_test

import (
	"context"
	"fmt"
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

// Register a target, Run the scheduler, and send it an async request: the
// request is answered 202 at once and replayed into the handler, with its
// path values, by the scheduler.
func Example() {
	dir, err := os.MkdirTemp("", "offload-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.DiscardHandler)

	db, err := queue.Open(filepath.Join(dir, "offload.db"), &queue.Options{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	sched, err := invoke.New(db, &invoke.Options{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}

	ran := make(chan string, 1)
	transcode := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, _ := task.FromContext(r.Context())
		ran <- fmt.Sprintf("transcoding %s, attempt %d", r.PathValue("name"), a.Number)
		fmt.Fprintf(w, "transcoded %s\n", r.PathValue("name"))
	})
	if err := sched.Register("transcode", transcode, &invoke.Policy{Concurrency: 4, MaxRetries: 3}); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error)
	go func() { stopped <- sched.Run(ctx) }()

	mux := http.NewServeMux()
	mux.Handle("POST /videos/{name}/transcode", trigger.New(sched, nil).Middleware("transcode")(transcode))
	req := httptest.NewRequest(http.MethodPost, "/videos/cat.mp4/transcode", nil)
	req.Header.Set("X-Fc-Invocation-Type", "Async")
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	id := rec.Header().Get("X-Fc-Request-Id")
	fmt.Println(rec.Code, http.StatusText(rec.Code))

	fmt.Println(<-ran)
	cancel() // Run returns once the running attempt is recorded
	if err := <-stopped; err != nil {
		log.Fatal(err)
	}
	t, err := task.Query(context.Background(), db, id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s after %d attempt: %d %q\n", t.Status, t.Attempts, t.Response.StatusCode, t.Response.Body)
	// Output:
	// 202 Accepted
	// transcoding cat.mp4, attempt 1
	// Succeeded after 1 attempt: 200 "transcoded cat.mp4\n"
}
