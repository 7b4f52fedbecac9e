package queue_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// A record that cannot be decoded fails the op that needs it, or is
// passed over, but never the other ops that share its commit: enqueues
// from other goroutines all succeed while the damaged task is leased,
// finished and stopped.
func TestDamagedRecordFailsOnlyItsOwnOp(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "damaged.db")
	q := openAt(t, path, nil)
	bad := enqueue(t, q, &queue.Job{Target: "dmg"})
	good := enqueue(t, q, &queue.Job{Target: "dmg"})
	enqueue(t, q, &queue.Job{Target: "run"})
	running := leaseAll(t, q, time.Now(), "run")[0]
	editClosed(t, q, path, func(tx *bolt.Tx) error {
		badKey, runKey := ulid.MustParseStrict(bad), ulid.MustParseStrict(running.ID)
		if err := tx.Bucket([]byte("tasks")).Put(badKey[:], []byte{0xff}); err != nil {
			return err
		}
		return tx.Bucket([]byte("state")).Put(runKey[:], []byte{0xff})
	})
	q, err := queue.Open(path, &queue.Options{Logger: discard}) // recovery passes the damaged Running task over
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var enqueued atomic.Int64
	for range 16 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := q.Enqueue(ctx, &queue.Job{Target: "other", Request: request(nil)}); err != nil {
					t.Errorf("an enqueue sharing a commit with a damaged task: %v", err)
					return
				}
				enqueued.Add(1)
			}
		})
	}
	ls, err := q.Lease(ctx, time.Now(), []queue.LeaseRequest{{Target: "dmg", Max: 10}})
	if err != nil || len(ls.Leases) != 1 || ls.Leases[0].ID != good {
		t.Errorf("Lease = %+v, %v; want the sound task only", ls, err)
	}
	if ls, err := q.Lease(ctx, time.Now(), []queue.LeaseRequest{{Target: "dmg", Max: 10}}); err != nil || len(ls.Leases) != 0 {
		t.Errorf("second Lease = %+v, %v; want the damaged task not offered again", ls, err)
	}
	for range 20 {
		if _, err := q.Finish(ctx, running, queue.Outcome{Status: task.Succeeded}); !errors.Is(err, reqcodec.ErrCorrupt) {
			t.Fatalf("Finish of a task whose state is damaged: %v; want ErrCorrupt", err)
		}
		if _, err := q.StopTask(ctx, bad); !errors.Is(err, reqcodec.ErrCorrupt) {
			t.Fatalf("Stop of a task whose record is damaged: %v; want ErrCorrupt", err)
		}
	}
	close(stop)
	wg.Wait()
	if enqueued.Load() == 0 {
		t.Error("no enqueue ran beside the damaged task's ops")
	}
	if _, err := q.Purge(ctx); err != nil {
		t.Errorf("Purge beside a damaged task: %v", err)
	}
}

// A blob shorter than the body its task records: the lease gets no body
// (ErrNoBody, so the task ends Invalid) rather than a shorter one read
// without an error. A plain blob cut short on disk is also what Check
// reports; a sealed blob's count of what it opened catches a record that
// claims more.
func TestShortBlob(t *testing.T) {
	t.Parallel()
	for _, sealed := range []bool{false, true} {
		opts := &queue.Options{}
		if sealed {
			opts.Sealer = newSealer(t, "k1", "k1")
		}
		path := filepath.Join(t.TempDir(), "short.db")
		q := openAt(t, path, opts)
		body := bytes.Repeat([]byte("x"), 1<<20)
		blob, err := q.CreateBlob()
		if err != nil {
			t.Fatal(err)
		}
		written := body
		if sealed {
			written = body[:1000] // the record below claims the whole body
		}
		if _, err := blob.Write(written); err != nil {
			t.Fatal(err)
		}
		if err := blob.Close(); err != nil {
			t.Fatal(err)
		}
		req := request(nil)
		req.Blob, req.BodySize = blob.Name(), int64(len(body))
		enqueue(t, q, &queue.Job{Target: "short", Request: req})
		if !sealed {
			if err := os.Truncate(filepath.Join(path+".blobs", blob.Name()), 1000); err != nil {
				t.Fatal(err)
			}
			if err := q.Check(); err == nil || !strings.Contains(err.Error(), "is 1000 bytes") {
				t.Errorf("Check of a blob cut to 1000 bytes: %v; want it reported", err)
			}
		}
		l := leaseAll(t, q, time.Now(), "short")[0]
		if rc, err := q.OpenBody(l); !errors.Is(err, queue.ErrNoBody) {
			if rc != nil {
				rc.Close()
			}
			t.Errorf("sealed %v: OpenBody of 1000 bytes for a body of %d: %v; want ErrNoBody", sealed, len(body), err)
		}
		if err := q.Close(); err != nil { // the damage stays: no Check at cleanup
			t.Fatal(err)
		}
	}
}
