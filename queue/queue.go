package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/offload-go/offload/internal/groupcommit"
)

// Defaults for Options.
const (
	DefaultLockTimeout   = 5 * time.Second
	DefaultRetention     = 7 * 24 * time.Hour
	DefaultPurgeInterval = time.Minute
	purgeBatch           = 500
)

// Options configures Open. A nil *Options means all defaults.
type Options struct {
	// LockTimeout bounds the wait for a database locked by another
	// process. Defaults to DefaultLockTimeout.
	LockTimeout time.Duration
	// Retention is how long finished tasks are kept before they are
	// purged. Defaults to DefaultRetention (7 days, as in FC).
	Retention time.Duration
	// PurgeInterval is how often retention runs. Defaults to
	// DefaultPurgeInterval.
	PurgeInterval time.Duration
	// Logger receives the queue's own events. If nil, slog.Default().
	Logger *slog.Logger
	// Now is the clock. If nil, time.Now. Tests set it.
	Now func() time.Time
	// Sealer encrypts at rest what is stored of each request (method, URL,
	// headers, body, captured values), its blob body, and the response of
	// its latest attempt; see NewAESGCM. Records stored before it was set
	// are still read; sealed ones need a Sealer holding their key. If nil,
	// nothing is encrypted.
	Sealer Sealer
}

// Queue is the bbolt backend. It implements Backend and task.Store.
type Queue struct {
	db       *bolt.DB
	path     string
	blobDir  string
	opts     Options
	log      *slog.Logger
	writes   *groupcommit.Committer[op]
	stop     chan struct{} // closed by Close: the purge loop ends
	wg       sync.WaitGroup
	closeMu  sync.Once
	closeErr error

	grow preallocator // the committer's: zero-filling ahead of the pages in use

	mu         sync.Mutex // guards subscriber, destinations, known and leftoverStops
	subscriber func(Notice)
	// destinations maps a target to its outbox rule (1 onSuccess, 2
	// onFailure). It is replaced, never changed, so a batch may keep it.
	destinations map[string]uint8
	// leftoverStops are the tasks found Stopping at Open; see Invalidate.
	leftoverStops [][]byte
	// known are the targets the scheduler registered (nil before its
	// Invalidate): a retry of another target's task is refused.
	known map[string]bool
}

var _ Backend = (*Queue)(nil)

// ErrNotOffload is wrapped by Open for a file that is a database but not an
// offload queue, or not a bbolt database at all.
var ErrNotOffload = errors.New("not an offload queue database")

// ErrLocked is wrapped by Open when another process holds the database
// past Options.LockTimeout.
var ErrLocked = errors.New("database is locked by another process")

// Open opens (creating it 0600 if missing) the queue database at path, and
// its blob directory path+".blobs" (0700). Tasks left Running by a process
// that died are made ready again with that attempt counted; tasks left
// Stopping end Stopped when a scheduler starts (see Invalidate).
func Open(path string, opts *Options) (*Queue, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	o.LockTimeout = cmp.Or(o.LockTimeout, DefaultLockTimeout)
	o.Retention = cmp.Or(o.Retention, DefaultRetention)
	o.PurgeInterval = cmp.Or(o.PurgeInterval, DefaultPurgeInterval)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.LockTimeout < 0 || o.Retention < 0 || o.PurgeInterval < 0 {
		return nil, fmt.Errorf("queue: open %s: negative option", path)
	}

	if err := checkFile(path); err != nil {
		return nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:         o.LockTimeout,
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: 1 << 30,
	})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("queue: open %s: %w (waited %s)", path, ErrLocked, o.LockTimeout)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrChecksum):
		return nil, fmt.Errorf("queue: open %s: %w: %w", path, ErrNotOffload, err)
	case err != nil:
		return nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	q := &Queue{
		db:      db,
		path:    path,
		blobDir: path + ".blobs",
		opts:    o,
		log:     o.Logger,
		stop:    make(chan struct{}),
	}
	if err := q.init(); err != nil {
		db.Close()
		return nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	q.grow.synced = make(chan struct{}, 1)
	if f, err := os.OpenFile(path, os.O_WRONLY, 0); err != nil {
		q.log.Warn("offload queue: cannot zero-fill the database file ahead", "err", err)
	} else {
		q.grow.f = f
		q.wg.Add(1)
		go q.syncLoop(f)
	}
	q.writes = groupcommit.Start(q.commit)
	q.wg.Add(1)
	go q.purgeLoop()
	return q, nil
}

// Path returns the database file's path.
func (q *Queue) Path() string { return q.path }

// Close stops the queue's goroutines after committing what is pending and
// closes the database. It is safe to call more than once.
func (q *Queue) Close() error {
	q.closeMu.Do(func() {
		q.writes.Close() // commits what is queued, then refuses more
		close(q.stop)
		q.wg.Wait()
		if q.grow.f != nil {
			q.grow.f.Close()
		}
		q.closeErr = q.db.Close()
	})
	return q.closeErr
}

// Subscribe implements Backend. One subscriber at a time is kept: the
// scheduler.
func (q *Queue) Subscribe(fn func(Notice)) func() {
	q.mu.Lock()
	q.subscriber = fn
	q.mu.Unlock()
	return func() {
		q.mu.Lock()
		q.subscriber = nil
		q.mu.Unlock()
	}
}

// op is one write. apply returns an error only for a failure that must
// abort the whole transaction; an op's own outcome (a conflict, say) is
// kept on the op, decided before it writes anything.
type op interface {
	apply(w *writer) error
}

// submit queues o for the next commit and waits until it is durable; see
// groupcommit.Committer.Submit.
func (q *Queue) submit(ctx context.Context, o op) error {
	return q.writes.Submit(ctx, o)
}

// commit writes one batch in one transaction, with one fsync.
func (q *Queue) commit(ops []op) (after func(), err error) {
	q.mu.Lock()
	dest := q.destinations
	q.mu.Unlock()
	w := &writer{q: q, now: q.opts.Now(), destinations: dest}
	err = q.db.Update(func(tx *bolt.Tx) error {
		q.zeroAhead(tx.Size())
		w.tx = tx
		w.cacheBuckets()
		for _, o := range ops {
			if err := o.apply(w); err != nil {
				return err
			}
		}
		return w.flushCounts()
	})
	if err != nil {
		err = fmt.Errorf("queue: commit: %w", err)
		q.log.Error("offload queue: commit failed", "ops", len(ops), "err", err)
		return nil, err
	}
	return func() { q.notify(w.notices, w.wake) }, nil
}

func (q *Queue) notify(notices []Notice, ready bool) {
	q.mu.Lock()
	fn := q.subscriber
	q.mu.Unlock()
	if fn == nil {
		return
	}
	for _, n := range notices {
		fn(n)
	}
	if ready {
		fn(Notice{Kind: TaskReady})
	}
}
