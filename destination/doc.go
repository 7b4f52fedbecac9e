// Package destination delivers the result of an async task, once its last
// attempt is over, to where the application wants it: a webhook, another
// target, a Go function, a log. This is what Function Compute and Lambda
// call destinations (or result callbacks): onSuccess and onFailure,
// configured per target in the invoke.Policy.
//
// Each delivery carries a [Record], shaped like FC's and Lambda's
// asynchronous invocation record. Deliveries are written to an outbox in
// the same transaction that finishes the task, and retried with backoff
// until delivered or given up, so a crash loses none; a destination may
// therefore see a record more than once, and can tell repeats apart by
// RequestContext.RequestID and Condition. A task retried (task.Retry)
// before its delivery went out no longer has that finish's record: the
// delivery is settled as task.DeliverySuperseded, and the retried task's
// own finish is delivered.
//
// Implement [Destination] to add a sink, and check it with
// destinationtest.Run.
package destination
