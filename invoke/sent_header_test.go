package invoke_test

import (
	"net/http"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// TestResponseHeaderAsSent: headers changed after WriteHeader are not part
// of the response, as with net/http, so a late Retry-After does not count.
func TestResponseHeaderAsSent(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		b.register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Before", "1")
			w.WriteHeader(http.StatusBadGateway)
			w.Header().Set("X-After", "1")
			w.Header().Set("Retry-After", "3600")
		}), &invoke.Policy{MaxRetries: invoke.NoRetries})
		b.start()
		id := b.enqueue(&queue.Job{Target: "work"})
		synctest.Wait()
		tk := b.wantStatus(id, task.Failed, 1)
		if h := tk.Response.Header; h.Get("X-Before") != "1" || h.Get("X-After") != "" || h.Get("Retry-After") != "" {
			t.Errorf("stored response header %v; want X-Before only", h)
		}
	})
}

// TestPanicRecordedAs500: a panicking handler's response is stored as the
// 500 that net/http would have answered.
func TestPanicRecordedAs500(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		b.register("work", http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }),
			&invoke.Policy{MaxRetries: invoke.NoRetries})
		b.start()
		id := b.enqueue(&queue.Job{Target: "work"})
		synctest.Wait()
		tk := b.wantStatus(id, task.Failed, 1)
		if tk.Response == nil || tk.Response.StatusCode != http.StatusInternalServerError || !strings.Contains(tk.LastError, "boom") {
			t.Errorf("response %+v, last error %q; want 500 and the panic", tk.Response, tk.LastError)
		}
	})
}
