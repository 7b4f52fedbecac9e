package queue_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/offload-go/offload/queue"
)

// The committer keeps the file zero-filled ahead of the pages the
// database uses, and the zeros never land on a page in use: enqueues from
// many goroutines, growing the file several times past the zero-filled
// window, leave every body intact after a reopen (whose free-page scan reads
// every page) and the indexes consistent.
func TestZeroFillAheadNeverOverwritesPages(t *testing.T) {
	t.Parallel()
	q := openAt(t, filepath.Join(t.TempDir(), "offload.db"), nil)
	const writers, perWriter, size = 16, 120, 16 << 10 // ~30 MiB of bodies
	body := func(w, i int) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("%02d/%03d;", w, i)), size/7)
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				enqueue(t, q, &queue.Job{Target: "t", Request: request(body(w, i))})
			}
		})
	}
	wg.Wait()

	used, err := queue.UsedSizeForTest(q)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(q.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	// Written zeros have blocks on disk; a file bbolt extended itself is
	// sparse beyond the used pages.
	if alloc, ok := allocatedBytes(fi); ok && alloc < used+queue.ZeroFillAhead/2 {
		t.Errorf("%d bytes of the file are allocated for %d used; want at least %d beyond", alloc, used, queue.ZeroFillAhead/2)
	}
	tail := make([]byte, fi.Size()-used)
	if _, err := f.ReadAt(tail, used); err != nil {
		t.Fatal(err)
	}
	if i := bytes.IndexFunc(tail, func(r rune) bool { return r != 0 }); i >= 0 {
		t.Errorf("byte %d beyond the used pages is not zero", used+int64(i))
	}

	q = reopen(t, q, nil)
	leases := leaseAll(t, q, time.Now().Add(time.Hour), "t")
	if len(leases) != writers*perWriter {
		t.Fatalf("%d tasks after reopening; want %d", len(leases), writers*perWriter)
	}
	seen := make(map[string]bool)
	for _, l := range leases {
		b := l.Request.Body
		var w, i int
		if _, err := fmt.Sscanf(string(b[:7]), "%02d/%03d;", &w, &i); err != nil || !bytes.Equal(b, body(w, i)) || seen[string(b[:7])] {
			t.Fatalf("task %s has a damaged or repeated body starting %q", l.ID, b[:min(len(b), 16)])
		}
		seen[string(b[:7])] = true
	}
}
