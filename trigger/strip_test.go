package trigger_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

func TestStripHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{trigger: &trigger.Options{TaskPath: taskPath, StripHeaders: []string{"authorization", "X-Api-Key"}}, run: true})
	id := b.accept(t, "body", "Authorization", "Bearer secret", "X-Api-Key", "k", "X-Kept", "yes")
	tk, err := task.Query(context.Background(), b.q, id)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"Authorization", "X-Api-Key"} {
		if v, ok := tk.Request.Header[h]; ok {
			t.Errorf("stored request keeps %s: %q", h, v)
		}
	}
	if got := tk.Request.Header.Get("X-Kept"); got != "yes" {
		t.Errorf("X-Kept = %q; want yes", got)
	}
	select {
	case c := <-b.calls:
		if c.Header.Get("Authorization") != "" || c.Header.Get("X-Kept") != "yes" {
			t.Errorf("replay saw headers %v", c.Header)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the task never ran")
	}
}

func TestAuthorizeNotFound(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{api: &trigger.APIOptions{Authorize: func(r *http.Request, action, id string) error {
		if action == "get" {
			return task.ErrNotFound // hide that the task exists
		}
		return errors.New("no")
	}}})
	id := b.accept(t, "body")
	if res := b.get(t, taskPath+id); res.status != http.StatusNotFound || res.code() != trigger.CodeTaskNotFound {
		t.Errorf("GET hidden task: %d %s; want 404 %s", res.status, res.code(), trigger.CodeTaskNotFound)
	}
	if res := b.get(t, taskPath); res.status != http.StatusForbidden || res.code() != trigger.CodeForbidden {
		t.Errorf("list: %d %s; want 403 %s", res.status, res.code(), trigger.CodeForbidden)
	}
}
