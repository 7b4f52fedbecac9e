package task

import (
	"fmt"
	"strings"
)

// Status is where a task is in its lifecycle. The names are Function
// Compute's, so that FC users recognise them.
type Status string

const (
	Enqueued  Status = "Enqueued"  // stored, waiting for its first attempt
	Running   Status = "Running"   // an attempt is in progress
	Retrying  Status = "Retrying"  // an attempt failed; waiting for the next one
	Succeeded Status = "Succeeded" // an attempt succeeded
	Failed    Status = "Failed"    // failed permanently or ran out of retries
	Stopping  Status = "Stopping"  // stop requested while running; the handler's context is cancelled
	Stopped   Status = "Stopped"   // stopped on request; no attempt follows
	Expired   Status = "Expired"   // MaxAge passed before an attempt succeeded
	Invalid   Status = "Invalid"   // target not registered, or the stored request cannot be decoded
)

// Statuses lists every status in lifecycle order.
var Statuses = []Status{Enqueued, Running, Retrying, Succeeded, Failed, Stopping, Stopped, Expired, Invalid}

// transitions holds the legal moves. Running may go back to Enqueued when a
// scheduler shuts down mid-attempt; terminal statuses other than Succeeded
// go back to Enqueued through an explicit retry.
var transitions = map[Status][]Status{
	Enqueued:  {Running, Stopped, Expired, Invalid},
	Running:   {Succeeded, Failed, Retrying, Stopping, Expired, Invalid, Enqueued},
	Retrying:  {Running, Stopped, Expired, Invalid},
	Stopping:  {Stopped},
	Succeeded: nil,
	Failed:    {Enqueued},
	Stopped:   {Enqueued},
	Expired:   {Enqueued},
	Invalid:   {Enqueued},
}

// Valid reports whether s is one of the statuses above.
func (s Status) Valid() bool {
	_, ok := transitions[s]
	return ok
}

// Terminal reports whether no further attempt follows without an explicit retry.
func (s Status) Terminal() bool {
	switch s {
	case Succeeded, Failed, Stopped, Expired, Invalid:
		return true
	}
	return false
}

// Retryable reports whether [Retry] accepts a task in status s.
func (s Status) Retryable() bool { return s.Terminal() && s != Succeeded }

// CheckTransition returns nil if a task may move from one status to the
// other, and an error wrapping [ErrInvalidTransition] otherwise.
func CheckTransition(from, to Status) error {
	for _, s := range transitions[from] {
		if s == to {
			return nil
		}
	}
	return fmt.Errorf("%w: %s -> %s", ErrInvalidTransition, from, to)
}

// ParseStatus reads a status name in any case.
func ParseStatus(s string) (Status, error) {
	for _, st := range Statuses {
		if strings.EqualFold(s, string(st)) {
			return st, nil
		}
	}
	return "", fmt.Errorf("%w: unknown status %q", ErrInvalidFilter, s)
}
