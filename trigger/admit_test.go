package trigger_test

import (
	"bytes"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/trigger"
)

// blobCounter counts the large bodies the middleware starts to store.
type blobCounter struct {
	trigger.Enqueuer
	blobs atomic.Int64
}

func (c *blobCounter) CreateBlob() (queue.Blob, error) {
	c.blobs.Add(1)
	return c.Enqueuer.CreateBlob()
}

// TestQueueFullRefusedBeforeBody: past MaxQueued, an async request is
// answered 503 before its body is read or stored, while an idempotent
// retry of an accepted request still gets its first 202.
func TestQueueFullRefusedBeforeBody(t *testing.T) {
	t.Parallel()
	counter := &blobCounter{}
	b := setup(t, setupOpts{
		policy:   &invoke.Policy{MaxQueued: 1},
		enqueuer: func(e trigger.Enqueuer) trigger.Enqueuer { counter.Enqueuer = e; return counter },
	})
	first := b.accept(t, "first", trigger.HeaderIdempotencyKey, "k1")

	big := bytes.Repeat([]byte("x"), 2*trigger.DefaultInlineBodyLimit)
	res := b.post(t, workPath+"x", string(big), trigger.HeaderInvocationType, "Async")
	if res.status != http.StatusServiceUnavailable || res.code() != trigger.CodeQueueFull {
		t.Fatalf("past MaxQueued: %d %s; want 503 %s", res.status, res.code(), trigger.CodeQueueFull)
	}
	if res.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if n := counter.blobs.Load(); n != 0 {
		t.Errorf("%d blobs started for a request refused as full", n)
	}
	again := b.post(t, workPath+"alpha", "first", trigger.HeaderInvocationType, "Async", trigger.HeaderIdempotencyKey, "k1")
	if again.status != http.StatusAccepted || !strings.Contains(string(again.body), first) {
		t.Errorf("idempotent retry when full: %d %s; want the first 202 (%s)", again.status, again.body, first)
	}
}
