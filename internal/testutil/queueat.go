package testutil

import (
	"testing"

	"github.com/offload-go/offload/queue"
)

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
