package task

import (
	"context"
	"time"
)

// Attempt describes the attempt that a replayed handler is running.
type Attempt struct {
	ID        string    // the task ID
	Target    string    // the target the task was sent to
	Number    int       // 1 for the first attempt
	CreatedAt time.Time // when the request was accepted
}

type attemptKey struct{}

// NewContext returns a copy of ctx carrying a. The scheduler calls it;
// tests of handlers may too.
func NewContext(ctx context.Context, a Attempt) context.Context {
	return context.WithValue(ctx, attemptKey{}, a)
}

// FromContext returns the attempt a replayed handler is running, and false
// when the request is not an offload replay (a sync call).
func FromContext(ctx context.Context) (Attempt, bool) {
	a, ok := ctx.Value(attemptKey{}).(Attempt)
	return a, ok
}
