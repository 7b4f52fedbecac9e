package postgres_test

import (
	"context"
	"log"
	"net/http"
	"os"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue/postgres"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

// Every replica of a service opens the same database and schema, and wires
// the scheduler and the middleware exactly as with the embedded queue.
// (No Output: it needs a PostgreSQL server.)
func ExampleOpen() {
	ctx := context.Background()
	q, err := postgres.Open(ctx, os.Getenv("DATABASE_URL"), &postgres.Options{Schema: "offload"})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	sched, err := invoke.New(q, nil)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /videos/{name}/transcode", trigger.New(sched, nil).Async("transcode",
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { /* the slow work */ }),
		&invoke.Policy{Concurrency: 4}))

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go sched.Run(runCtx)

	// Any replica sees every task, whichever accepted or ran it.
	if t, err := task.Query(ctx, q, "01JD4X2R8S5W0ZK6Q3N7B9C1EF"); err == nil {
		log.Println(t.Status)
	}
	_ = http.ListenAndServe(":8080", mux)
}
