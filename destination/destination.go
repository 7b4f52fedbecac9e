package destination

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"time"
	"unicode/utf8"

	"github.com/offload-go/offload/task"
)

// Destination receives the records of finished tasks.
type Destination interface {
	// Deliver hands rec over. A nil error means delivered; an error means
	// try again later, within the scheduler's bounded tries. Return
	// Permanent(err) to stop retrying at once, or RetryAfter(err, d) when
	// the receiver asked for a pause. Deliver must honour ctx.
	Deliver(ctx context.Context, rec Record) error
}

// Condition says why a record was sent. The names are Lambda's and FC's
// where they have one.
type Condition string

const (
	Success           Condition = "Success"           // an attempt succeeded
	RetriesExhausted  Condition = "RetriesExhausted"  // the last allowed attempt failed
	NonRetryableError Condition = "NonRetryableError" // an attempt failed in a way not retried (a 4xx)
	EventAgeExceeded  Condition = "EventAgeExceeded"  // MaxAge passed before success
	Stopped           Condition = "Stopped"           // stopped on request
	Invalid           Condition = "Invalid"           // target gone, or the stored request undecodable
)

// Version is Record.Version for the encoding documented on Record.
const Version = "1.0"

// Record is what a destination receives. Its JSON encoding is stable:
//
//	{
//	  "version": "1.0",
//	  "timestamp": "2026-11-25T20:15:29.53535891Z",
//	  "requestContext": {
//	    "requestId": "01M8A5JMZP442HFYP7HK6MA4SD",   // the task ID
//	    "functionArn": "transcode",                   // the target
//	    "condition": "Success",
//	    "approximateInvokeCount": 2
//	  },
//	  "requestPayload": "...",          // the request body, as text
//	  "requestPayloadEncoding": "base64", // only when the body is not UTF-8
//	  "requestPayloadSize": 104857600,  // only when the payload is not the whole body
//	  "responseContext": {              // {} when no attempt answered
//	    "statusCode": 500,              // only when an attempt answered
//	    "functionError": "..."          // only when the task did not succeed
//	  },
//	  "responsePayload": "...",         // the last response body (capped), as text
//	  "responsePayloadEncoding": "base64",
//	  "responsePayloadSize": 2097152    // only when the payload is not the whole body
//	}
type Record struct {
	Version                string         `json:"version"`
	Timestamp              time.Time      `json:"timestamp"`
	RequestContext         RequestContext `json:"requestContext"`
	RequestPayload         string         `json:"requestPayload"`
	RequestPayloadEncoding string         `json:"requestPayloadEncoding,omitempty"`
	// RequestPayloadSize is set only when RequestPayload holds less than
	// the request body: the body's size in bytes. A body too large to
	// keep inline (the queue streamed it to a blob file) is left out.
	RequestPayloadSize      int64           `json:"requestPayloadSize,omitempty"`
	ResponseContext         ResponseContext `json:"responseContext"`
	ResponsePayload         string          `json:"responsePayload"`
	ResponsePayloadEncoding string          `json:"responsePayloadEncoding,omitempty"`
	// ResponsePayloadSize is set only when ResponsePayload holds less than
	// the response body, which the scheduler's ResponseBodyCap cut: the
	// body's size in bytes.
	ResponsePayloadSize int64 `json:"responsePayloadSize,omitempty"`
}

// RequestContext identifies the task and why the record was sent.
type RequestContext struct {
	RequestID              string    `json:"requestId"`
	FunctionArn            string    `json:"functionArn"`
	Condition              Condition `json:"condition"`
	ApproximateInvokeCount int       `json:"approximateInvokeCount"`
}

// ResponseContext is how the last attempt ended.
type ResponseContext struct {
	StatusCode    int    `json:"statusCode,omitempty"`
	FunctionError string `json:"functionError,omitempty"`
}

// ConditionOf returns the condition of a task in a terminal status, and
// false for any other status. It tells NonRetryableError from
// RetriesExhausted by the last answer's status code as
// invoke.DefaultClassify reads it; the scheduler's own records follow the
// target's Classify.
func ConditionOf(t *task.Task) (Condition, bool) {
	switch t.Status {
	case task.Succeeded:
		return Success, true
	case task.Expired:
		return EventAgeExceeded, true
	case task.Stopped:
		return Stopped, true
	case task.Invalid:
		return Invalid, true
	case task.Failed:
		if t.Response != nil && t.Response.StatusCode >= 400 && t.Response.StatusCode < 500 &&
			t.Response.StatusCode != 408 && t.Response.StatusCode != 425 && t.Response.StatusCode != 429 {
			return NonRetryableError, true
		}
		return RetriesExhausted, true
	}
	return "", false
}

// NewRecord builds the record of a finished task.
func NewRecord(t *task.Task, cond Condition) Record {
	r := Record{
		Version:   Version,
		Timestamp: t.FinishedAt,
		RequestContext: RequestContext{
			RequestID:              t.ID,
			FunctionArn:            t.Target,
			Condition:              cond,
			ApproximateInvokeCount: t.Attempts,
		},
		ResponseContext: ResponseContext{FunctionError: t.LastError},
	}
	if cond == Success {
		r.ResponseContext.FunctionError = ""
	}
	r.RequestPayload, r.RequestPayloadEncoding = textOrBase64(t.Request.Body)
	if n := t.Request.BodySize; n > int64(len(t.Request.Body)) {
		r.RequestPayloadSize = n
	}
	if res := t.Response; res != nil {
		r.ResponseContext.StatusCode = res.StatusCode
		r.ResponsePayload, r.ResponsePayloadEncoding = textOrBase64(res.Body)
		if res.BodySize > int64(len(res.Body)) {
			r.ResponsePayloadSize = res.BodySize
		}
	}
	return r
}

func textOrBase64(b []byte) (string, string) {
	if utf8.Valid(b) {
		return string(b), ""
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}

// Func adapts a function to a Destination.
type Func func(ctx context.Context, rec Record) error

// Deliver calls f.
func (f Func) Deliver(ctx context.Context, rec Record) error { return f(ctx, rec) }

// Log returns a destination that writes each record to l at Info level
// (Warn for any condition but Success). It never fails. If l is nil, it
// writes to slog.Default().
func Log(l *slog.Logger) Destination {
	return Func(func(ctx context.Context, rec Record) error {
		l := cmp.Or(l, slog.Default())
		level := slog.LevelInfo
		if rec.RequestContext.Condition != Success {
			level = slog.LevelWarn
		}
		l.Log(ctx, level, "offload: task finished",
			"id", rec.RequestContext.RequestID,
			"target", rec.RequestContext.FunctionArn,
			"condition", rec.RequestContext.Condition,
			"invocations", rec.RequestContext.ApproximateInvokeCount,
			"status", rec.ResponseContext.StatusCode,
			"error", rec.ResponseContext.FunctionError)
		return nil
	})
}

// Multi delivers to each of ds in turn and joins their errors (as
// errors.Join); the record counts as delivered only when all succeed, so a
// retry may repeat it to those that did. The joined error is permanent
// (see IsPermanent) only when every failure is: one part that may recover
// gets its retries.
func Multi(ds ...Destination) Destination {
	return Func(func(ctx context.Context, rec Record) error {
		var errs []error
		for _, d := range ds {
			errs = append(errs, d.Deliver(ctx, rec))
		}
		return errors.Join(errs...)
	})
}

// PermanentError marks a delivery error that retrying cannot fix. Test
// for it with IsPermanent, which reads an error that joins several (Multi)
// as permanent only when each of them is.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return "permanent: " + e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so that the scheduler stops retrying the delivery
// and records it failed. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// RetryAfterError is a delivery error whose receiver asked to be tried
// again After from now (an HTTP Retry-After). The scheduler waits that
// long if it is longer than its backoff, at most its DeliveryBackoffMax,
// still within its bounded tries.
type RetryAfterError struct {
	Err   error
	After time.Duration
}

func (e *RetryAfterError) Error() string { return e.Err.Error() }
func (e *RetryAfterError) Unwrap() error { return e.Err }

// RetryAfter wraps err so that the scheduler tries the delivery again no
// sooner than d from now (see RetryAfterError). RetryAfter(nil, d) is nil.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &RetryAfterError{Err: err, After: max(d, 0)}
}

// IsPermanent reports whether retrying the delivery that returned err
// cannot help: err wraps a *PermanentError, and where it joins several
// errors (errors.Join, Multi, fmt.Errorf with more than one %w), every one
// of them is permanent.
func IsPermanent(err error) bool {
	for err != nil {
		switch e := err.(type) {
		case *PermanentError:
			return true
		case interface{ Unwrap() []error }:
			parts := e.Unwrap()
			for _, p := range parts {
				if !IsPermanent(p) {
					return false
				}
			}
			return len(parts) > 0
		case interface{ Unwrap() error }:
			err = e.Unwrap()
		default:
			return false
		}
	}
	return false
}
