package invoke

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/time/rate"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/task"
)

// Policy defaults, as in Function Compute where it has one.
const (
	DefaultConcurrency     = 10
	DefaultMaxRetries      = 3
	DefaultMaxAge          = 24 * time.Hour
	DefaultBackoffInitial  = time.Second
	DefaultBackoffMax      = 5 * time.Minute
	DefaultResponseBodyCap = 1 << 20
)

// NoRetries as Policy.MaxRetries allows a single attempt.
const NoRetries = -1

// Policy says how a target's tasks run. The zero value means all defaults.
type Policy struct {
	// Concurrency bounds the target's attempts running at once.
	// Defaults to DefaultConcurrency. A target whose handlers return
	// sooner than a lease commits may have up to as many tasks more
	// leased ahead, waiting briefly for a slot (see the package doc).
	Concurrency int
	// Timeout bounds one attempt; the handler's context is cancelled with
	// cause task.ErrTimeout when it passes, and the attempt is retried.
	// Zero means no limit.
	Timeout time.Duration
	// MaxRetries is how many times a failed attempt is retried. Defaults
	// to DefaultMaxRetries (3, as in FC); NoRetries allows none. Throttled
	// answers (429, 503) do not use it up; MaxAge bounds them.
	MaxRetries int
	// MaxAge is how long a task may wait for a successful attempt, counted
	// from its acceptance (or its last explicit retry); past it the task is
	// Expired. Defaults to DefaultMaxAge (24 h, as in FC).
	MaxAge time.Duration
	// BackoffInitial and BackoffMax shape the exponential backoff between
	// attempts (doubling, with ±50% jitter). Default to DefaultBackoffInitial
	// and DefaultBackoffMax. A handler's Retry-After header takes precedence
	// (a second at least).
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// Classify decides what an attempt's status code means. If nil,
	// DefaultClassify.
	Classify func(statusCode int) Verdict
	// RateLimit bounds how many attempts start per second, beside
	// Concurrency, to spread a burst out (golang.org/x/time/rate). Zero
	// means no limit.
	RateLimit rate.Limit
	// RateBurst is how many attempts may start at once within RateLimit.
	// Defaults to 1.
	RateBurst int
	// MaxQueued bounds the target's unfinished tasks; past it the trigger
	// answers 503 with Retry-After. Zero means no bound.
	MaxQueued int
	// OnSuccess receives the record of each task that succeeds, and
	// OnFailure of each that ends Failed, Expired, Stopped or Invalid. If
	// nil, nothing is delivered. Deliveries are durable and retried; see
	// package destination.
	OnSuccess destination.Destination
	OnFailure destination.Destination
}

// Verdict is what an attempt's answer means for its task.
type Verdict int

const (
	Success  Verdict = iota + 1 // the task succeeded
	Retry                       // try again after backoff, using up one retry
	Throttle                    // try again after backoff without using up a retry
	Fail                        // fail at once
)

// failedCondition tells, for a task that ended Failed, whether this
// policy's Classify failed its last answer at once or its retries ran out;
// destination.ConditionOf can only assume DefaultClassify.
func (c *Policy) failedCondition(t *task.Task) destination.Condition {
	if t.Response != nil && t.Response.StatusCode != 0 && c.Classify(t.Response.StatusCode) == Fail {
		return destination.NonRetryableError
	}
	return destination.RetriesExhausted
}

// DefaultClassify: 2xx and 3xx succeed; 429 and 503 throttle; 408, 425
// and other 5xx are retried; other codes fail.
func DefaultClassify(code int) Verdict {
	switch {
	case code >= 200 && code < 400:
		return Success
	case code == http.StatusTooManyRequests, code == http.StatusServiceUnavailable:
		return Throttle
	case code == http.StatusRequestTimeout, code == http.StatusTooEarly, code >= 500:
		return Retry
	}
	return Fail
}

var errPolicy = errors.New("invoke: invalid policy")

// withDefaults returns a copy of p with defaults filled, or an error for a
// field out of range.
func (p *Policy) withDefaults() (Policy, error) {
	var c Policy
	if p != nil {
		c = *p
	}
	bad := func(format string, args ...any) (Policy, error) {
		return c, fmt.Errorf("%w: "+format, append([]any{errPolicy}, args...)...)
	}
	if c.Concurrency < 0 || c.Timeout < 0 || c.MaxAge < 0 || c.BackoffInitial < 0 || c.BackoffMax < 0 || c.MaxQueued < 0 ||
		c.RateLimit < 0 || c.RateBurst < 0 {
		return bad("negative value")
	}
	if c.MaxRetries < NoRetries {
		return bad("MaxRetries must be >= 0, or NoRetries")
	}
	c.Concurrency = cmp.Or(c.Concurrency, DefaultConcurrency)
	c.RateBurst = cmp.Or(c.RateBurst, 1)
	if c.RateLimit == rate.Inf {
		c.RateLimit = 0 // no limit
	}
	c.MaxRetries = cmp.Or(c.MaxRetries, DefaultMaxRetries)
	if c.MaxRetries == NoRetries {
		c.MaxRetries = 0
	}
	c.MaxAge = cmp.Or(c.MaxAge, DefaultMaxAge)
	c.BackoffInitial = cmp.Or(c.BackoffInitial, DefaultBackoffInitial)
	c.BackoffMax = cmp.Or(c.BackoffMax, DefaultBackoffMax)
	if c.BackoffMax < c.BackoffInitial {
		return bad("BackoffMax %s is shorter than BackoffInitial %s", c.BackoffMax, c.BackoffInitial)
	}
	if c.Classify == nil {
		c.Classify = DefaultClassify
	}
	return c, nil
}

// minRetryAfter is the shortest wait a handler's Retry-After sets.
const minRetryAfter = time.Second

// backoffDelay returns the wait before try n+1 after n failed tries
// (n >= 1): exponential from initial, capped at maxDelay, with ±50%
// jitter, from cenkalti/backoff.
func backoffDelay(initial, maxDelay time.Duration, n int) time.Duration {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     initial,
		RandomizationFactor: backoff.DefaultRandomizationFactor,
		Multiplier:          2,
		MaxInterval:         maxDelay,
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	b.Reset()
	d := b.NextBackOff()
	for i := 1; i < n && i < 64; i++ {
		d = b.NextBackOff()
	}
	return d
}
