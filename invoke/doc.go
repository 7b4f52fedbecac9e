// Package invoke is offload's scheduler: it claims stored async requests
// from the queue, replays them into the handlers registered as targets,
// decides from each answer whether the task succeeded, is retried with
// exponential backoff and jitter, or failed, and records the outcome.
//
// Register every target, then Run the scheduler; it returns when its
// context is cancelled, after in-flight attempts have finished or been
// handed back to the queue:
//
//	sched, err := invoke.New(db, &invoke.Options{Logger: logger})
//	if err != nil { ... }
//	if err := sched.Register("transcode", transcodeHandler, &invoke.Policy{Concurrency: 4}); err != nil { ... }
//	go sched.Run(ctx)
//
// The scheduler never polls: it sleeps until the queue reports a ready task,
// a slot frees, or the next delayed task's time arrives. Every goroutine it
// starts has ended when Run returns.
//
// A target whose handlers return sooner than a lease takes to commit leases
// tasks ahead of its free slots, up to Concurrency more, so that its slots
// do not sit idle while the next tasks are leased. Such a task shows Running
// while it waits for a slot, about one commit; it is handed back unrun when
// the scheduler stops, and ends Stopped without running when stopped.
// Targets with slower handlers lease proportionally fewer ahead, and
// rate-limited targets none.
//
// A replayed handler sees the original method, URL, headers, body, host,
// remote address and path values, plus X-Fc-Request-Id and
// X-Fc-Retry-Count. Its context carries the attempt ([task.FromContext]) and
// is cancelled with cause [task.ErrStopped], [task.ErrTimeout] or
// [task.ErrShutdown].
package invoke
