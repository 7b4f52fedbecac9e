// Package offload makes any net/http handler callable asynchronously, the
// way Function Compute's HTTP triggers accept `X-Fc-Invocation-Type: Async`.
//
// A request marked async is stored durably in an embedded bbolt database,
// answered at once with 202 Accepted and a task ID, and replayed later
// against the same handler by an in-process scheduler with retries and
// backoff:
//
//	db, err := queue.Open("offload.db", nil)
//	if err != nil { ... }
//	defer db.Close()
//	sched, err := invoke.New(db, nil)
//	if err != nil { ... }
//	tr := trigger.New(sched, &trigger.Options{TaskPath: "/tasks/"})
//	mux := http.NewServeMux()
//	mux.Handle("POST /videos/{name}/transcode",
//		tr.Async("transcode", transcodeHandler, &invoke.Policy{Concurrency: 4}))
//	mux.Handle("/tasks/", http.StripPrefix("/tasks", trigger.TaskAPI(db, nil)))
//	go sched.Run(context.Background())
//	defer sched.Stop(context.Background()) // before db.Close: records running attempts
//	// anywhere in the application:
//	t, err := task.Query(ctx, db, id)
//
// The packages: [github.com/offload-go/offload/task] (the vocabulary and the
// helpers applications call), [github.com/offload-go/offload/queue] (the
// durable store), [github.com/offload-go/offload/invoke] (the scheduler),
// [github.com/offload-go/offload/trigger] (the HTTP middleware and task API)
// and [github.com/offload-go/offload/destination] (where results go).
package offload
