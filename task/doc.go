// Package task is offload's vocabulary: the Task record, its ID, the Status
// state machine, listing filters, the sentinel errors, and the helpers that
// application code calls to observe and control async work.
//
// A task is one async HTTP request that the trigger middleware accepted. Its
// status moves through the legal transitions of [Status]; every backend
// (the embedded bbolt queue, or PostgreSQL) implements [Store], and the
// application talks to it through [Query], [List], [Stop] and [Retry]:
//
//	t, err := task.Query(ctx, db, id)
//	if errors.Is(err, task.ErrNotFound) { ... }
//	fmt.Println(t.Status, t.Attempts)
//
// Inside a handler that offload replays, [FromContext] tells which task and
// attempt is running, [Logger] gives a logger whose records are kept with the
// task, and [SetProgress] reports progress that [Query] shows while it runs.
package task
