// Package testutil holds helpers for offload's own tests: a real queue in a
// temporary directory whose indexes are checked when the test ends.
package testutil

import (
	"path/filepath"
	"testing"

	"github.com/offload-go/offload/queue"
)

// OpenQueue opens a queue in t.TempDir(). On cleanup it runs the index
// checker, failing the test on any disagreement, then closes the queue.
func OpenQueue(t testing.TB, opts *queue.Options) *queue.Queue {
	t.Helper()
	q, err := queue.Open(filepath.Join(t.TempDir(), "offload.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := q.Check(); err != nil {
			t.Error(err)
		}
		if err := q.Close(); err != nil {
			t.Error(err)
		}
	})
	return q
}
