package task

import "errors"

// Sentinel errors. Backends and helpers wrap them; test with [errors.Is].
var (
	// ErrNotFound: no task has that ID (or it was purged by retention).
	ErrNotFound = errors.New("task: not found")
	// ErrConflict: a caller-chosen task ID is already taken.
	ErrConflict = errors.New("task: id already exists")
	// ErrIdempotencyMismatch: an Idempotency-Key was reused with a different request body.
	ErrIdempotencyMismatch = errors.New("task: idempotency key reused with a different request")
	// ErrInvalidID: the ID is neither a generated ULID nor a valid caller-chosen ID.
	ErrInvalidID = errors.New("task: invalid id")
	// ErrInvalidFilter: a listing filter has an out-of-range or malformed field.
	ErrInvalidFilter = errors.New("task: invalid filter")
	// ErrInvalidTransition: the status change is not one the state machine allows.
	ErrInvalidTransition = errors.New("task: invalid status transition")
	// ErrFinished: the task already reached a terminal status, so it cannot be stopped.
	ErrFinished = errors.New("task: already finished")
	// ErrNotRetryable: only Failed, Stopped, Expired and Invalid tasks can be retried.
	ErrNotRetryable = errors.New("task: not retryable in its current status")
	// ErrTargetNotRegistered, with ErrNotRetryable: a retry named a task
	// whose target no running scheduler has registered, so that it would
	// wait forever.
	ErrTargetNotRegistered = errors.New("task: target not registered")
	// ErrLeaseLost: a finish named an attempt that no longer holds the task.
	ErrLeaseLost = errors.New("task: lease lost")
	// ErrQueueFull: the backlog reached its configured bound; try again later.
	ErrQueueFull = errors.New("task: queue full")
	// ErrClosed: the store or scheduler is closed or shutting down.
	ErrClosed = errors.New("task: closed")
	// ErrStopped is the cause of a handler's context cancellation when its
	// task was stopped through [Stop]. Read it with [context.Cause].
	ErrStopped = errors.New("task: stopped")
	// ErrShutdown is the cause of a handler's context cancellation when the
	// scheduler shuts down; the attempt is returned to the queue, not failed.
	ErrShutdown = errors.New("task: scheduler shutting down")
	// ErrTimeout is the cause of a handler's context cancellation when the
	// attempt ran past its per-attempt timeout.
	ErrTimeout = errors.New("task: attempt timed out")
)
