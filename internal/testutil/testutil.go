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
	return OpenQueueAt(t, filepath.Join(t.TempDir(), "offload.db"), opts)
}

// OpenQueueAt is OpenQueue for a database at a chosen path: a test that
// reopens a queue, or hands its file to another process, names the file
// itself. On cleanup it runs the index checker, failing the test on any
// disagreement, then closes the queue.
func OpenQueueAt(t testing.TB, path string, opts *queue.Options) *queue.Queue {
	t.Helper()
	q, err := queue.Open(path, opts)
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
