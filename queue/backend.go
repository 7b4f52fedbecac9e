package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/task"
)

// Backend is the seam between offload's scheduler and trigger and a durable
// store. *Queue (bbolt) implements it. Every method is safe for concurrent
// use. Writes return only when durable.
type Backend interface {
	task.Store

	// Enqueue stores a new task. It wraps task.ErrConflict for a caller ID
	// already taken, task.ErrIdempotencyMismatch for a reused idempotency
	// key with another fingerprint, task.ErrQueueFull past Job.MaxQueued,
	// and task.ErrClosed after Close.
	Enqueue(ctx context.Context, job *Job) (Receipt, error)
	// CreateBlob starts a body too large to keep inline.
	CreateBlob() (Blob, error)
	// OpenBody opens the body of a leased task for reading. Its error
	// wraps ErrNoBody when the body will never be read; any other may pass.
	OpenBody(l *Lease) (io.ReadCloser, error)

	// Lease claims ready tasks for the requested targets and marks them
	// Running with their attempt counted.
	Lease(ctx context.Context, now time.Time, reqs []LeaseRequest) (*LeaseResult, error)
	// Finish records the outcome of a leased attempt. It wraps
	// task.ErrLeaseLost if the attempt no longer holds the task.
	Finish(ctx context.Context, l *Lease, o Outcome) (task.Status, error)
	// Report records what a running attempt reported (logs, progress).
	// It wraps task.ErrLeaseLost if the attempt no longer holds the task.
	Report(ctx context.Context, l *Lease, r *Report) error
	// Invalidate marks Invalid every waiting task whose target is not in
	// known, since nothing will ever run it.
	Invalidate(ctx context.Context, known []string) (int, error)

	// SetDestinations says which of target's finishes owe a delivery:
	// onSuccess for Succeeded, onFailure for the other terminal statuses.
	SetDestinations(target string, onSuccess, onFailure bool)
	// PendingDeliveries returns up to max deliveries due by now, leaving
	// out those skip names by key, and the due time of the first one not
	// yet due (zero if none).
	PendingDeliveries(ctx context.Context, now time.Time, max int, skip func(key string) bool) ([]*Delivery, time.Time, error)
	// FinishDelivery records how a delivery try ended.
	FinishDelivery(ctx context.Context, d *Delivery, res DeliveryResult) error

	// Subscribe registers fn to hear of tasks becoming ready and of stop
	// requests for running tasks. fn runs on the store's goroutine and must
	// not block. The returned func unsubscribes.
	Subscribe(fn func(Notice)) (unsubscribe func())
}

// ErrNoBody is wrapped by OpenBody when a task's body cannot be read and
// never will be: its record or blob is missing or damaged.
var ErrNoBody = errors.New("the task's body is lost")

// MaxIdempotencyKeyLen bounds Job.IdempotencyKey.
const MaxIdempotencyKeyLen = 1024

// MaxReadyAt is the latest Job.ReadyAt: the last instant that nanoseconds
// since 1970 in an int64 hold, in 2262.
var MaxReadyAt = time.Unix(0, math.MaxInt64).UTC()

// ErrInvalidJob is wrapped by Enqueue for a job that cannot be stored: no
// request, or a ReadyAt after MaxReadyAt.
var ErrInvalidJob = errors.New("invalid job")

// CheckJob returns what makes job impossible to store, wrapping
// task.ErrInvalidID (a bad target, ID or idempotency key) or
// ErrInvalidJob; every backend's Enqueue calls it first.
func CheckJob(job *Job) error {
	if err := task.CheckTarget(job.Target); err != nil {
		return err
	}
	if job.ID != "" {
		if err := task.CheckCallerID(job.ID); err != nil {
			return err
		}
	}
	if job.Request == nil {
		return fmt.Errorf("%w: no request", ErrInvalidJob)
	}
	if len(job.IdempotencyKey) > MaxIdempotencyKeyLen {
		return fmt.Errorf("%w: idempotency key longer than %d bytes", task.ErrInvalidID, MaxIdempotencyKeyLen)
	}
	if job.ReadyAt.After(MaxReadyAt) {
		return fmt.Errorf("%w: ReadyAt %s is after %s", ErrInvalidJob, job.ReadyAt.Format(time.RFC3339), MaxReadyAt.Format(time.RFC3339))
	}
	return nil
}

// Job is a request to store a new task.
type Job struct {
	// ID is a caller-chosen task ID, or "" for a generated one.
	ID     string
	Target string
	// ReadyAt is the earliest start of the first attempt; zero means now.
	ReadyAt time.Time
	// IdempotencyKey, when set, makes a second Enqueue with the same key
	// and Fingerprint return the first task instead of storing another.
	// At most MaxIdempotencyKeyLen bytes.
	IdempotencyKey string
	Fingerprint    [32]byte
	// MaxQueued bounds the target's unfinished tasks; 0 means no bound.
	MaxQueued int
	Request   *reqcodec.Request
}

// Receipt says what Enqueue stored.
type Receipt struct {
	ID string
	// Replayed is true when an idempotency key matched an earlier task,
	// whose ID this is; nothing new was stored.
	Replayed bool
}

// Blob is a body being written to the store. Close makes it durable;
// Remove discards it (also after Close, if the enqueue failed).
type Blob interface {
	io.Writer
	Name() string
	Close() error
	Remove() error
}

// LeaseRequest asks for up to Max ready tasks of one target.
type LeaseRequest struct {
	Target string
	Max    int
	// MaxAge: a task enqueued longer ago than this is Expired instead of
	// leased. 0 means no limit.
	MaxAge time.Duration
}

// LeaseResult is what one Lease call claimed.
type LeaseResult struct {
	Leases []*Lease
	// Expired lists tasks that Lease found past their MaxAge.
	Expired []*task.Task
	// Next is the earliest future ready time among the requested targets,
	// zero if none is waiting. It is a time not after now when a ready
	// task was left although a request had room (tasks found past MaxAge
	// took the places): lease again at once.
	Next time.Time
}

// Lease is one claimed attempt.
type Lease struct {
	ID         string
	Target     string
	Attempt    int // this attempt's number, 1-based
	RetryBase  int // attempts before the last explicit retry
	Throttled  int // earlier attempts since RetryBase that were throttled
	CreatedAt  time.Time
	EnqueuedAt time.Time
	// Request is the stored request; nil when it cannot be decoded, with
	// Corrupt saying why (the scheduler then finishes the task Invalid).
	Request *reqcodec.Request
	Corrupt error
	// Key is the backend's own handle for the task.
	Key []byte
}

// Outcome is how an attempt ended and what follows.
type Outcome struct {
	// Status is Succeeded, Failed, Retrying, Expired or Invalid, or
	// Enqueued to hand the task back unrun (shutdown), which uncounts the
	// attempt. A task that was asked to stop ends Stopped whatever this says.
	Status  task.Status
	ReadyAt time.Time // for Retrying
	// Throttled counts this attempt as throttled (429/503), which does not
	// use up the retry budget.
	Throttled bool
	Error     string
	Detail    string
	Response  *task.Response
	// Report is what the attempt reported since its last Report call.
	Report *Report
}

// NoticeKind says what a Notice reports.
type NoticeKind int

const (
	// TaskReady: a task became ready, or a new earliest ready time exists.
	TaskReady NoticeKind = iota + 1
	// StopRequested: the running task ID was asked to stop (or, with an
	// Attempt, that attempt: it lost its lease).
	StopRequested
	// DeliveryReady: a delivery was written or rescheduled.
	DeliveryReady
)

// Notice is sent to the subscriber after the commit that caused it.
type Notice struct {
	Kind NoticeKind
	ID   string
	// Attempt, in a StopRequested, names the one attempt to stop; 0 means
	// whichever runs. A replica that ran a task again after losing its
	// lease has two attempts of it, and only the lost one must end.
	Attempt int
}
