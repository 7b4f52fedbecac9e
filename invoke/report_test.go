package invoke_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"testing/synctest"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// What a replayed handler logs through task.Logger and reports with
// task.SetProgress is kept with its task, each record tagged with the
// attempt; a handler that does neither leaves no records.
func TestHandlerLogsAndProgressKept(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		b.register("chatty", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			task.SetProgress(r.Context(), 50, "half way")
			task.Logger(r.Context()).Info("frame done", "n", 7)
		}), nil)
		b.register("quiet", http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), nil)
		b.start()
		chatty := b.enqueue(&queue.Job{Target: "chatty"})
		quiet := b.enqueue(&queue.Job{Target: "quiet"})
		synctest.Wait()

		tk := b.wantStatus(chatty, task.Succeeded, 1)
		if p := tk.Progress; p == nil || p.Percent != 50 || p.Message != "half way" {
			t.Errorf("progress %+v; want 50%% %q", p, "half way")
		}
		if len(tk.Logs) != 1 || tk.Logs[0].Message != "frame done n=7" || tk.Logs[0].Level != "INFO" || tk.Logs[0].Attempt != 1 {
			t.Errorf("logs %+v; want one INFO record %q of attempt 1", tk.Logs, "frame done n=7")
		}
		if tk := b.wantStatus(quiet, task.Succeeded, 1); len(tk.Logs) != 0 || tk.Progress != nil {
			t.Errorf("a silent handler's task has logs %+v, progress %+v", tk.Logs, tk.Progress)
		}
	})
}

// Progress computed as done/total with nothing to do is NaN, which JSON
// cannot carry: it is kept as 0, so that the task can still be shown.
func TestProgressNaNKeptAsZero(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		b.register("empty", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			done, total := 0.0, 0.0
			task.SetProgress(r.Context(), 100*done/total, "nothing to do")
		}), nil)
		b.start()
		id := b.enqueue(&queue.Job{Target: "empty"})
		synctest.Wait()
		tk := b.wantStatus(id, task.Succeeded, 1)
		if p := tk.Progress; p == nil || p.Percent != 0 || p.Message != "nothing to do" {
			t.Errorf("progress %+v; want 0%% %q", p, "nothing to do")
		}
		if _, err := json.Marshal(tk); err != nil {
			t.Errorf("the task cannot be shown: %v", err)
		}
	})
}
