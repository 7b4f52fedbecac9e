package invoke

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// Delivery defaults.
const (
	DefaultDeliveryTries          = 10
	DefaultDeliveryBackoffInitial = 2 * time.Second
	DefaultDeliveryBackoffMax     = 5 * time.Minute
	DefaultDeliveryConcurrency    = 8
	// MaxSubmitBody bounds the body of a request passed to Submit.
	MaxSubmitBody = 16 << 20
	deliveryBatch = 64
)

// deliverLoop sends the outbox's due deliveries to their destinations. It
// wakes when a delivery is written or rescheduled, a delivery slot frees,
// or the next one falls due; it never polls.
func (s *Scheduler) deliverLoop(ctx context.Context) {
	s.loop(ctx, s.dwake, s.sendDue, "reading the outbox")
}

func (s *Scheduler) sendDue(ctx context.Context) (time.Time, error) {
	// A destination at its DeliveryConcurrency may have many due entries
	// ahead of another's: keep reading past the ones seen in this round
	// while some destination has a free slot, so that a slow destination
	// cannot hide another's deliveries behind its own.
	seen := make(map[string]bool)
	skip := func(key string) bool {
		if seen[key] {
			return true
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		_, ok := s.sending[key]
		return ok
	}
	// s.sending holds true for a delivery in flight, and false for one
	// recorded since the last round: a read that began before that record
	// was committed may still see its entry due, and must not send it
	// again. Reads from here on begin after those commits.
	s.mu.Lock()
	for k, inFlight := range s.sending {
		if !inFlight {
			delete(s.sending, k)
		}
	}
	s.mu.Unlock()
	for {
		due, next, err := s.q.PendingDeliveries(context.WithoutCancel(ctx), time.Now(), deliveryBatch, skip)
		if err != nil {
			return time.Time{}, err
		}
		s.mu.Lock()
		for _, d := range due {
			seen[string(d.Key)] = true
			slot := d.Target + "\x00" + d.Destination
			if s.perDest[slot] >= s.opts.DeliveryConcurrency {
				continue // this destination is busy; a finished send wakes us
			}
			s.perDest[slot]++
			s.sending[string(d.Key)] = true
			s.senders.Add(1)
			go s.send(d, slot)
		}
		more := len(due) == deliveryBatch && s.freeDeliverySlot()
		s.mu.Unlock()
		if !more {
			return next, nil
		}
	}
}

// freeDeliverySlot reports whether a configured destination has a free
// delivery slot; s.mu is held.
func (s *Scheduler) freeDeliverySlot() bool {
	for name, t := range s.targets {
		if t.policy.OnSuccess != nil && s.perDest[name+"\x00"+task.OnSuccess] < s.opts.DeliveryConcurrency {
			return true
		}
		if t.policy.OnFailure != nil && s.perDest[name+"\x00"+task.OnFailure] < s.opts.DeliveryConcurrency {
			return true
		}
	}
	return false
}

// send makes one delivery try and records how it went.
func (s *Scheduler) send(d *queue.Delivery, slot string) {
	defer s.senders.Done()
	started := time.Now()
	res := s.try(d)
	s.observe(Event{Kind: EventDelivered, Target: d.Target, TaskID: d.TaskID, Destination: d.Destination,
		Attempt: d.Tries + 1, Duration: time.Since(started), Err: res.Error})
	switch {
	case errors.Is(context.Cause(s.sendCtx), task.ErrShutdown):
		// Cut short by shutdown: the entry stays due, uncounted, for the next run.
	case res.Error != "":
		s.log.Warn("offload: delivery failed", "id", d.TaskID, "target", d.Target, "destination", d.Destination,
			"try", d.Tries+1, "retryAt", res.RetryAt, "err", res.Error)
		fallthrough
	default:
		if err := s.q.FinishDelivery(context.Background(), d, res); err != nil {
			s.log.Error("offload: recording a delivery failed; it will be tried again", "id", d.TaskID, "err", err)
		}
	}
	s.mu.Lock()
	s.sending[string(d.Key)] = false // recorded; the next round forgets it
	s.perDest[slot]--
	s.mu.Unlock()
	select {
	case s.dwake <- struct{}{}:
	default:
	}
}

func (s *Scheduler) try(d *queue.Delivery) queue.DeliveryResult {
	s.mu.Lock()
	t := s.targets[d.Target]
	s.mu.Unlock()
	var dest destination.Destination
	if t != nil {
		dest = t.policy.OnFailure
		if d.Destination == task.OnSuccess {
			dest = t.policy.OnSuccess
		}
	}
	if dest == nil {
		return queue.DeliveryResult{Error: fmt.Sprintf("target %q has no %s destination any more", d.Target, d.Destination)}
	}
	tk, err := s.q.GetTask(s.sendCtx, d.TaskID)
	if errors.Is(err, task.ErrNotFound) {
		return queue.DeliveryResult{Error: "task no longer exists"}
	}
	if err == nil {
		cond, ok := destination.ConditionOf(tk)
		if cond == destination.RetriesExhausted || cond == destination.NonRetryableError {
			cond = t.policy.failedCondition(tk)
		}
		if !ok || (cond == destination.Success) != (d.Destination == task.OnSuccess) ||
			(!d.FinishedAt.IsZero() && !d.FinishedAt.Equal(tk.FinishedAt)) {
			// Retried since the finish this delivery was for (the retry
			// superseded it after this read): that finish's record is
			// gone, and the task's next finish owes a delivery of its own.
			// Sending this one would give the destination another
			// finish's record.
			return queue.DeliveryResult{Error: fmt.Sprintf("task was retried before its %s record was delivered; it is %s now", d.Destination, tk.Status)}
		}
		rec := destination.NewRecord(tk, cond)
		if p := catch("destination", func() { err = dest.Deliver(s.sendCtx, rec) }); p != "" {
			err = errors.New(p)
		}
		if err == nil {
			return queue.DeliveryResult{}
		}
	}
	res := queue.DeliveryResult{Error: err.Error()}
	if d.Tries+1 < s.opts.DeliveryTries && !destination.IsPermanent(err) {
		wait := backoffDelay(s.opts.DeliveryBackoffInitial, s.opts.DeliveryBackoffMax, d.Tries+1)
		if ra := (*destination.RetryAfterError)(nil); errors.As(err, &ra) {
			// The receiver's pause lengthens the wait, never shortens it
			// (a "Retry-After: 0" would spend every try at once), and stays
			// within the bound the operator set: a pending delivery keeps
			// its task from being purged.
			wait = min(max(wait, ra.After), s.opts.DeliveryBackoffMax)
		}
		res.RetryAt = time.Now().Add(wait)
	}
	return res
}

// Submit stores r as a new async task for target, as the trigger
// middleware would for an async HTTP request: it is durable when Submit
// returns, and its ID is returned. The body is read whole (at most
// MaxSubmitBody bytes). An Idempotency-Key header makes a repeated Submit
// of the same request return the first task's ID. Submit implements
// destination.Submitter, and lets application code start async work
// without an HTTP round trip. Errors that trying again cannot fix (an
// unknown target, a body over MaxSubmitBody, an idempotency key that is
// malformed or was used with another request) are marked
// destination.Permanent, so that a destination.Target delivery gives up
// at once; errors.Is still finds their sentinels.
func (s *Scheduler) Submit(ctx context.Context, target string, r *http.Request) (string, error) {
	uri := r.URL.RequestURI()
	req := &reqcodec.Request{
		Method: r.Method, RequestURI: uri, Proto: "HTTP/1.1", Host: r.Host, RemoteAddr: r.RemoteAddr,
		Header: r.Header, Values: reqcodec.SortedKVs(s.Capture(r)),
	}
	job := &queue.Job{Target: target, IdempotencyKey: r.Header.Get("Idempotency-Key"), Request: req}
	if r.Body != nil {
		body, err := io.ReadAll(io.LimitReader(r.Body, MaxSubmitBody+1))
		if err != nil {
			return "", fmt.Errorf("invoke: submit to %s: read body: %w", target, err)
		}
		if len(body) > MaxSubmitBody {
			return "", destination.Permanent(fmt.Errorf("invoke: submit to %s: body over %d bytes", target, MaxSubmitBody))
		}
		req.Body, req.BodySize = body, int64(len(body))
	}
	if job.IdempotencyKey != "" {
		h := reqcodec.NewFingerprint(r.Method, uri, req.Values)
		h.Write(req.Body)
		h.Sum(job.Fingerprint[:0])
	}
	rc, err := s.Enqueue(ctx, job)
	if errors.Is(err, ErrUnknownTarget) || errors.Is(err, task.ErrInvalidID) || errors.Is(err, task.ErrIdempotencyMismatch) {
		return "", destination.Permanent(err)
	}
	if err != nil {
		return "", err
	}
	return rc.ID, nil
}
