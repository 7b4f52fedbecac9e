package invoke

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/offload-go/offload/internal/clip"
	"github.com/offload-go/offload/internal/retryafter"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// Headers added to a replayed request.
const (
	HeaderRequestID  = "X-Fc-Request-Id"
	HeaderRetryCount = "X-Fc-Retry-Count"
)

// maxStack bounds the stack trace kept from a panicking handler or
// destination.
const maxStack = 4 << 10

// run replays one attempt and decides what follows it.
func (s *Scheduler) run(ctx context.Context, t *target, l *queue.Lease) queue.Outcome {
	if l.Request == nil {
		return queue.Outcome{Status: task.Invalid, Error: fmt.Sprintf("stored request cannot be decoded: %v", l.Corrupt)}
	}
	if t.policy.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, t.policy.Timeout, task.ErrTimeout)
		defer cancel()
	}
	ctx = task.NewContext(ctx, task.Attempt{ID: l.ID, Target: l.Target, Number: l.Attempt, CreatedAt: l.CreatedAt})
	if s.opts.Restore != nil && len(l.Request.Values) > 0 {
		values := make(map[string]string, len(l.Request.Values))
		for _, kv := range l.Request.Values {
			values[kv.Key] = kv.Value
		}
		ctx = s.opts.Restore(ctx, values)
	}
	body, err := s.q.OpenBody(l)
	if errors.Is(err, queue.ErrNoBody) || errors.Is(err, queue.ErrSealed) {
		return queue.Outcome{Status: task.Invalid, Error: err.Error()}
	}
	if err != nil { // a store or the file system that may recover
		out := queue.Outcome{Error: err.Error(), Detail: "attempt " + strconv.Itoa(l.Attempt) + " could not read the body"}
		return after(&t.policy, l, out, Retry, nil)
	}
	defer body.Close()
	rep := &reporter{q: s.q, lease: l, interval: s.opts.ReportInterval, log: s.log}
	r, err := rebuild(task.WithReporter(ctx, rep, s.log), l, body)
	if err != nil {
		return queue.Outcome{Status: task.Invalid, Error: err.Error()}
	}

	rec := newRecorder(s.opts.ResponseBodyCap)
	started := time.Now()
	panicked := serve(t.handler, rec, r)
	cause := context.Cause(ctx)
	if ctx.Err() == nil {
		cause = nil
	}
	out := s.decide(t, l, rec, panicked, cause, time.Since(started))
	out.Report = rep.close()
	return out
}

// serve runs the handler, turning a panic into its message and stack.
func serve(h http.Handler, w http.ResponseWriter, r *http.Request) (panicked string) {
	return catch("handler", func() { h.ServeHTTP(w, r) })
}

// catch runs f and returns "<what> panicked: <value>" and the stack if it
// panics, "" otherwise: application code (a handler, a destination) must
// not take the process down, nor again at every restart.
func catch(what string, f func()) (panicked string) {
	defer func() {
		if v := recover(); v != nil {
			panicked = fmt.Sprintf("%s panicked: %v\n%s", what, v, clip.Prefix(string(debug.Stack()), maxStack))
		}
	}()
	f()
	return ""
}

// rebuild makes the *http.Request the handler sees from the stored one.
func rebuild(ctx context.Context, l *queue.Lease, body io.ReadCloser) (*http.Request, error) {
	sr := l.Request
	u, err := url.ParseRequestURI(sr.RequestURI)
	if err != nil {
		return nil, fmt.Errorf("stored request URI %q: %w", sr.RequestURI, err)
	}
	proto := sr.Proto
	major, minor, ok := http.ParseHTTPVersion(proto)
	if !ok {
		proto, major, minor = "HTTP/1.1", 1, 1
	}
	header := replayHeader(sr.Header, l.ID, strconv.Itoa(l.Attempt-1))
	r := (&http.Request{
		Method:        sr.Method,
		URL:           u,
		Proto:         proto,
		ProtoMajor:    major,
		ProtoMinor:    minor,
		Header:        header,
		Body:          body,
		ContentLength: sr.BodySize,
		Host:          sr.Host,
		RemoteAddr:    sr.RemoteAddr,
		RequestURI:    sr.RequestURI,
		Pattern:       sr.Pattern,
	}).WithContext(ctx)
	if sr.BodySize == 0 {
		r.Body = http.NoBody
	}
	for _, pv := range sr.PathValues {
		r.SetPathValue(pv.Key, pv.Value)
	}
	return r, nil
}

// replayHeader is a copy of stored with X-Fc-Request-Id and
// X-Fc-Retry-Count set, made the way Header.Clone makes one (a map and one
// array for all the values) but with room for the two: setting them on a
// clone would grow its map.
func replayHeader(stored http.Header, id, retries string) http.Header {
	n := 2
	for _, vs := range stored {
		n += len(vs)
	}
	all := make([]string, 0, n)
	h := make(http.Header, len(stored)+2)
	for k, vs := range stored {
		all = append(all, vs...)
		h[k] = all[len(all)-len(vs) : len(all) : len(all)]
	}
	all = append(all, id, retries)
	h[HeaderRequestID] = all[n-2 : n-1 : n-1]
	h[HeaderRetryCount] = all[n-1 : n : n]
	return h
}

// decide classifies an attempt and computes what follows.
func (s *Scheduler) decide(t *target, l *queue.Lease, rec *recorder, panicked string, cause error, took time.Duration) queue.Outcome {
	p := &t.policy
	out := queue.Outcome{Response: rec.response()}
	if cause != nil && !rec.wroteHeader {
		out.Response.StatusCode = 0 // cut short before it answered: no status, not net/http's implied 200
	}
	code := rec.statusCode()
	var verdict Verdict
	switch {
	// A handler whose context we cancelled may answer anything, 200 by
	// returning without a word or a panic (http.ErrAbortHandler): the
	// cancellation, not the answer, decides.
	case errors.Is(cause, task.ErrShutdown):
		// Handed back unrun: the attempt was cut short by our shutdown.
		return queue.Outcome{Status: task.Enqueued, Detail: "scheduler shut down during the attempt"}
	case errors.Is(cause, task.ErrStopped):
		return queue.Outcome{Status: task.Failed, Error: "stopped on request", Response: out.Response}
	case panicked != "":
		verdict, out.Error = Retry, panicked
		if !rec.wroteHeader {
			out.Response.StatusCode = http.StatusInternalServerError // what net/http answers a panic with
		}
	case errors.Is(cause, task.ErrTimeout):
		verdict, out.Error = Retry, fmt.Sprintf("attempt timed out after %s", p.Timeout)
	default:
		verdict = p.Classify(code)
		if verdict != Success {
			out.Error = fmt.Sprintf("handler answered %d %s", code, http.StatusText(code))
		}
	}
	// Every attempt writes this line: concatenation costs a fraction of Sprintf.
	out.Detail = "attempt " + strconv.Itoa(l.Attempt) + " took " + took.Round(time.Microsecond).String()
	if out.Error != "" {
		first, _, _ := strings.Cut(out.Error, "\n")
		out.Detail = first + "; " + out.Detail
	}
	return after(p, l, out, verdict, rec.sentHeader())
}

// after completes out, an attempt's outcome so far, with what follows its
// verdict: the status, and for a retry the next attempt's time (from
// answer's Retry-After, or backoff), within MaxRetries and MaxAge.
func after(p *Policy, l *queue.Lease, out queue.Outcome, verdict Verdict, answer http.Header) queue.Outcome {
	switch verdict {
	case Success:
		out.Status = task.Succeeded
		return out
	case Fail:
		out.Status = task.Failed
		return out
	}
	out.Throttled = verdict == Throttle
	failures := l.Attempt - l.RetryBase - l.Throttled
	if out.Throttled {
		failures--
	}
	if verdict == Retry && failures > p.MaxRetries {
		out.Status = task.Failed
		out.Error += fmt.Sprintf(" (retries exhausted: %d)", p.MaxRetries)
		return out
	}
	now := time.Now()
	wait, ok := retryafter.Parse(answer, now)
	if ok {
		// "Retry-After: 0" (or a date our clock has passed) on every
		// throttled answer would rerun the task back to back until MaxAge.
		wait = max(wait, minRetryAfter)
	} else {
		wait = backoffDelay(p.BackoffInitial, p.BackoffMax, l.Attempt-l.RetryBase)
	}
	out.ReadyAt = now.Add(wait)
	if out.ReadyAt.Sub(l.EnqueuedAt) > p.MaxAge {
		out.Status = task.Expired
		out.Error += fmt.Sprintf(" (next attempt would pass MaxAge %s)", p.MaxAge)
		return out
	}
	out.Status = task.Retrying
	return out
}
