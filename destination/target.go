package destination

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
)

// Submitter stores a request as a new async task for a target;
// *invoke.Scheduler implements it. It honours the request's
// Idempotency-Key header as the trigger middleware does.
type Submitter interface {
	Submit(ctx context.Context, target string, r *http.Request) (id string, err error)
}

// Target returns a destination that sends each record, as a JSON POST, to
// another registered target as a new async task: Function Compute's
// "dest-succ / dest-fail function" pattern. The follow-up work gets
// retries, status and destinations of its own. An idempotency key made of
// the task ID, the condition and the finish time keeps a repeated delivery
// from starting the follow-up twice, while the next finish of a task that
// was retried starts one of its own.
func Target(s Submitter, target string) Destination {
	return Func(func(ctx context.Context, rec Record) error {
		body, err := json.Marshal(rec)
		if err != nil {
			return Permanent(err)
		}
		r, err := http.NewRequestWithContext(ctx, http.MethodPost, "/", bytes.NewReader(body))
		if err != nil {
			return Permanent(err)
		}
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Idempotency-Key", "destination:"+rec.RequestContext.RequestID+":"+string(rec.RequestContext.Condition)+
			":"+strconv.FormatInt(rec.Timestamp.UnixNano(), 10))
		r.Header.Set(HeaderRequestID, rec.RequestContext.RequestID)
		r.Header.Set(HeaderCondition, string(rec.RequestContext.Condition))
		_, err = s.Submit(ctx, target, r)
		return err
	})
}
