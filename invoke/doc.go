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
// A target whose slots free faster than a lease commits leases tasks ahead
// of its free slots, about as many as free during one lease and at most
// Concurrency more, so that its slots do not sit idle while the next tasks
// are leased; targets whose handlers take longer lease fewer ahead, in
// proportion, and rate-limited targets none. A task leased ahead shows
// Running while it waits for a slot. It ends Stopped at once, without
// running, when stopped; it is handed back to the queue, uncounted, when
// the scheduler stops or when no slot frees within two lease times (at
// least 10 ms), and the target then leases none ahead until its handlers
// return quickly again.
//
// A replayed handler sees the original method, URL, headers, body, host,
// remote address and path values, plus X-Fc-Request-Id and
// X-Fc-Retry-Count. Its context carries the attempt ([task.FromContext]) and
// is cancelled with cause [task.ErrStopped], [task.ErrTimeout] or
// [task.ErrShutdown].
package invoke
