package task

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// Task is the observable record of one async request. Its JSON encoding
// is the Go field names' (createdAt, attempts); the task HTTP API
// (trigger.TaskAPI) answers in Function Compute's names instead
// (createdTime, invocationCount), so decode its answers into a type of
// your own rather than into Task.
type Task struct {
	ID     string `json:"id"`
	Target string `json:"target"`
	Status Status `json:"status"`
	// Attempts counts the attempts started, the running one included.
	Attempts int `json:"attempts"`
	// RetryBase is Attempts at the last explicit [Retry]; the retry budget
	// counts from there.
	RetryBase int `json:"retryBase,omitempty"`

	CreatedAt time.Time `json:"createdAt"`
	// EnqueuedAt is CreatedAt, or the time of the last explicit [Retry];
	// MaxAge counts from it.
	EnqueuedAt time.Time `json:"enqueuedAt"`
	// StartedAt is when the latest attempt started; zero before the first.
	StartedAt time.Time `json:"startedAt,omitzero"`
	// FinishedAt is when the task reached a terminal status.
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	// ReadyAt is when the next attempt may start (Enqueued and Retrying).
	ReadyAt time.Time `json:"readyAt,omitzero"`

	LastError string    `json:"lastError,omitempty"`
	Events    []Event   `json:"events,omitempty"`
	Request   Request   `json:"request"`
	Response  *Response `json:"response,omitempty"`
	// Progress and Logs are what the handler reported through SetProgress
	// and Logger, the latest records last.
	Progress *Progress   `json:"progress,omitempty"`
	Logs     []LogRecord `json:"logs,omitempty"`
	// Deliveries are the destination deliveries of the task's finishes,
	// oldest first.
	Deliveries []Delivery `json:"deliveries,omitempty"`
}

// Delivery is the state of one result delivery to a destination.
type Delivery struct {
	// Destination is "onSuccess" or "onFailure".
	Destination string         `json:"destination"`
	Status      DeliveryStatus `json:"status"`
	Tries       int            `json:"tries"`
	LastError   string         `json:"lastError,omitempty"`
	UpdatedAt   time.Time      `json:"updatedAt"`
}

// DeliveryStatus is where a delivery stands.
type DeliveryStatus string

const (
	DeliveryPending   DeliveryStatus = "pending"
	DeliveryDelivered DeliveryStatus = "delivered"
	DeliveryFailed    DeliveryStatus = "failed" // gave up after its tries
	// DeliverySuperseded: the task was retried before the delivery was
	// done. The finish it was for has no record any more (one being sent
	// at that moment may still have gone out), and the task's next finish
	// owes a delivery of its own.
	DeliverySuperseded DeliveryStatus = "superseded"
)

// Destination names in Delivery.Destination.
const (
	OnSuccess = "onSuccess"
	OnFailure = "onFailure"
)

// Event is one entry of a task's history.
type Event struct {
	Time    time.Time `json:"time"`
	Status  Status    `json:"status"`
	Attempt int       `json:"attempt,omitempty"`
	Detail  string    `json:"detail,omitempty"`
}

// Request summarises the stored HTTP request.
type Request struct {
	Method     string      `json:"method"`
	URL        string      `json:"url"`
	Host       string      `json:"host,omitempty"`
	RemoteAddr string      `json:"remoteAddr,omitempty"`
	Header     http.Header `json:"header,omitempty"`
	BodySize   int64       `json:"bodySize"`
	// Body is filled only when asked for (it may be large).
	Body []byte `json:"body,omitempty"`
	// Values are what the scheduler's Capture hook kept of the request's
	// context (the user, a tenant). They are for the application's own
	// checks, such as the task API's Authorize hook, and are never shown
	// by the task API.
	Values map[string]string `json:"-"`
}

// Response is what the latest finished attempt answered. Body holds at most
// the scheduler's response cap; BodySize counts every byte written.
// StatusCode is 0 when the attempt was cut short (a timeout, a stop) before
// its handler wrote a status.
type Response struct {
	StatusCode int         `json:"statusCode"`
	Header     http.Header `json:"header,omitempty"`
	Body       []byte      `json:"body,omitempty"`
	BodySize   int64       `json:"bodySize"`
}

// Store is what a backend offers to observe and control tasks. Application
// code calls the helpers ([Query], [List], [Stop], [Retry]), which check
// their input before the backend sees it.
type Store interface {
	// GetTask returns the task, or an error wrapping ErrNotFound.
	GetTask(ctx context.Context, id string) (*Task, error)
	// ListTasks returns one page of tasks matching a validated filter.
	ListTasks(ctx context.Context, f Filter) (*Page, error)
	// StopTask stops a queued task at once, or asks a running one to stop
	// (Stopping). It wraps ErrFinished for a terminal task.
	StopTask(ctx context.Context, id string) (*Task, error)
	// RetryTask enqueues a Failed, Stopped, Expired or Invalid task again
	// with a fresh retry budget. It wraps ErrNotRetryable otherwise.
	RetryTask(ctx context.Context, id string, reason string) (*Task, error)
	// CountTasks returns how many tasks each target has in each status
	// (only the non-zero counts), in O(1) of the backlog.
	CountTasks(ctx context.Context) ([]Count, error)
}

// Count is how many tasks a target has in a status.
type Count struct {
	Target string `json:"target"`
	Status Status `json:"status"`
	N      int64  `json:"count"`
}

// Query returns the task with the given ID. It wraps [ErrInvalidID] for a
// malformed ID and [ErrNotFound] for an unknown one.
func Query(ctx context.Context, s Store, id string) (*Task, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	return s.GetTask(ctx, id)
}

// List returns one page of the tasks that match f. It wraps
// [ErrInvalidFilter] for a filter out of range. Pass Page.Next as f.Cursor to
// read the next page; paging never returns a task twice or skips one, even
// while tasks change status between pages.
func List(ctx context.Context, s Store, f Filter) (*Page, error) {
	f, err := f.normalize()
	if err != nil {
		return nil, err
	}
	return s.ListTasks(ctx, f)
}

// Stop stops the task: a queued or retrying task becomes Stopped at once; a
// running one becomes Stopping, its handler's context is cancelled with
// cause [ErrStopped], and it becomes Stopped when the handler returns. No
// retry follows. Stopping a finished task returns an error wrapping
// [ErrFinished]; stopping a Stopping task returns it unchanged.
func Stop(ctx context.Context, s Store, id string) (*Task, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	return s.StopTask(ctx, id)
}

// Retry runs a Failed, Stopped, Expired or Invalid task again with a fresh
// retry budget and MaxAge, recording reason in its history. It wraps
// [ErrNotRetryable] for a task in any other status, and also
// [ErrTargetNotRegistered] when schedulers run but none has the task's
// target.
func Retry(ctx context.Context, s Store, id, reason string) (*Task, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	if reason == "" {
		reason = "retried on request"
	}
	return s.RetryTask(ctx, id, reason)
}

// Counts returns how many tasks each target has in each status (only the
// non-zero counts), sorted by target then status.
func Counts(ctx context.Context, s Store) ([]Count, error) {
	counts, err := s.CountTasks(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(counts, func(a, b Count) int {
		return cmp.Or(cmp.Compare(a.Target, b.Target), cmp.Compare(statusRank(a.Status), statusRank(b.Status)))
	})
	return counts, nil
}

func statusRank(s Status) int { return slices.Index(Statuses, s) }

// Order is the listing order.
type Order string

const (
	NewestFirst Order = "desc" // the default
	OldestFirst Order = "asc"
)

// Listing limits.
const (
	DefaultLimit = 20
	MaxLimit     = 100
)

// Filter selects tasks for [List]. Zero fields match everything.
type Filter struct {
	Statuses []Status // any of these
	Target   string
	IDPrefix string
	Since    time.Time // created at or after
	Until    time.Time // created before
	Order    Order     // defaults to NewestFirst
	Limit    int       // 1..100; 0 means DefaultLimit
	Cursor   string    // from Page.Next
}

// Page is one page of a listing.
type Page struct {
	Tasks []*Task `json:"tasks"`
	// Next is the cursor of the following page, or "" after the last one.
	Next string `json:"nextCursor,omitempty"`
}

func (f Filter) normalize() (Filter, error) {
	bad := func(format string, args ...any) (Filter, error) {
		return f, fmt.Errorf("%w: "+format, append([]any{ErrInvalidFilter}, args...)...)
	}
	for _, s := range f.Statuses {
		if !s.Valid() {
			return bad("unknown status %q", s)
		}
	}
	switch f.Order {
	case "":
		f.Order = NewestFirst
	case NewestFirst, OldestFirst:
	default:
		return bad("order must be %q or %q", NewestFirst, OldestFirst)
	}
	switch {
	case f.Limit == 0:
		f.Limit = DefaultLimit
	case f.Limit < 1 || f.Limit > MaxLimit:
		return bad("limit must be 1..%d", MaxLimit)
	}
	if len(f.IDPrefix) > MaxIDLen {
		return bad("id prefix longer than %d bytes", MaxIDLen)
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return bad("since must be before until")
	}
	return f, nil
}
