package postgres

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/offload-go/offload/internal/groupcommit"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// Defaults for Options.
const (
	DefaultSchema        = "offload"
	DefaultLeaseTimeout  = 10 * time.Second
	DefaultRetention     = 7 * 24 * time.Hour
	DefaultPurgeInterval = time.Minute
	DefaultBlobChunkSize = 1 << 20
	// DefaultBlobGrace is how long a blob that no task names is kept after
	// its last write before it is removed as an abandoned upload.
	DefaultBlobGrace = time.Hour
	// DefaultTimeout bounds one database operation.
	DefaultTimeout = 30 * time.Second
	purgeBatch     = 500
	reapBatch      = 100
	maxBatchTries  = 4
)

// Options configures Open. A nil *Options means all defaults.
type Options struct {
	// Schema is the PostgreSQL schema that holds the queue's tables; it is
	// created if missing (which needs the CREATE privilege on the
	// database). Replicas that share a queue name the same schema.
	// Defaults to DefaultSchema.
	Schema string
	// LeaseTimeout is how long a running attempt's lease lasts without a
	// heartbeat. A replica extends the leases of its running attempts every
	// HeartbeatInterval; when a replica dies its leases expire and its
	// attempts are made ready again, within about LeaseTimeout. Defaults
	// to DefaultLeaseTimeout.
	LeaseTimeout time.Duration
	// HeartbeatInterval is how often leases are extended. It must be less
	// than half of LeaseTimeout. Defaults to LeaseTimeout/4.
	HeartbeatInterval time.Duration
	// Retention is how long finished tasks are kept before they are
	// purged. Defaults to DefaultRetention (7 days, as in FC).
	Retention time.Duration
	// PurgeInterval is how often retention runs. Defaults to
	// DefaultPurgeInterval.
	PurgeInterval time.Duration
	// BlobChunkSize is the size of the bytea chunks that a large body is
	// stored in, and so the memory one upload or one replay holds.
	// Defaults to DefaultBlobChunkSize (1 MiB).
	BlobChunkSize int
	// BlobGrace is how long an abandoned upload's chunks are kept.
	// Defaults to DefaultBlobGrace.
	BlobGrace time.Duration
	// Timeout bounds each database operation (a transaction, a read), so
	// that a database that stops answering fails writes (a 503 at the
	// trigger) instead of hanging them. Defaults to DefaultTimeout.
	Timeout time.Duration
	// Logger receives the queue's own events. If nil, slog.Default().
	Logger *slog.Logger
	// Now is the clock of task times. If nil, time.Now. Lease expiry uses
	// the database's clock, so that replicas agree on it.
	Now func() time.Time
}

func (o *Options) validate() error {
	if o.Schema == "" || len(o.Schema) > 48 {
		return fmt.Errorf("schema name must be 1..48 bytes")
	}
	if o.LeaseTimeout < 0 || o.HeartbeatInterval < 0 || o.Retention < 0 || o.PurgeInterval < 0 || o.BlobChunkSize < 0 || o.BlobGrace < 0 || o.Timeout < 0 {
		return fmt.Errorf("negative option")
	}
	if o.LeaseTimeout < 100*time.Millisecond {
		return fmt.Errorf("LeaseTimeout %s is shorter than 100ms", o.LeaseTimeout)
	}
	if o.HeartbeatInterval*2 >= o.LeaseTimeout {
		return fmt.Errorf("HeartbeatInterval %s must be less than half of LeaseTimeout %s", o.HeartbeatInterval, o.LeaseTimeout)
	}
	return nil
}

// Queue is the PostgreSQL backend. It implements queue.Backend and
// task.Store; any number of replicas may open the same schema.
type Queue struct {
	pool    *pgxpool.Pool
	connCfg *pgx.ConnConfig // for the listener
	opts    Options
	log     *slog.Logger
	sql     statements
	schema  string
	channel string

	owner    [16]byte // this replica's lease owner ID, new at each Open
	ownerHex string
	shard    int16 // the first of this replica's counter shards; see txn.shard

	// life ends when the queue is closed (or crashes, in tests): every
	// statement runs under it.
	life     context.Context
	kill     context.CancelFunc
	writes   *groupcommit.Committer[op]
	stop     chan struct{} // closed by Close: background loops end
	reapNow  chan struct{}
	wg       sync.WaitGroup
	closeMu  sync.Once
	closeErr error
	commits  atomic.Int64 // committer transactions, for benchmarks
	paused   atomic.Bool  // heartbeats skipped, as by a stalled process (tests)
	// known are the targets this replica runs, once Invalidate has
	// recorded them (nil before): its scheduler has set their destinations
	// by then, so its reaper may end their Stopping tasks, whose
	// deliveries need them.
	known atomic.Pointer[[]string]

	noticeMu   sync.Mutex // guards notices
	notices    []queue.Notice
	noticeKick chan struct{}

	mu           sync.Mutex // guards everything below
	closed       bool
	subscriber   func(queue.Notice)
	destinations map[string]uint8
	// held are the attempts this replica runs, each with its task's ID: the
	// heartbeat extends their leases and cancels the ones it finds lost.
	// Lease adds; Finish removes. A task leased here again after its lease
	// was lost (a stall) has two.
	held map[heldAttempt]string
}

type heldAttempt struct {
	key     [16]byte
	attempt int
}

var _ queue.Backend = (*Queue)(nil)

// Open connects to the database at connString (a URL or a DSN, as pgx
// takes it, with pool settings such as pool_max_conns), creates or
// migrates the schema, and starts the queue: its committer, its listener
// for other replicas' notices, its lease heartbeat, the reaper of expired
// leases and retention.
func Open(ctx context.Context, connString string, opts *Options) (*Queue, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	o.Schema = cmp.Or(o.Schema, DefaultSchema)
	o.LeaseTimeout = cmp.Or(o.LeaseTimeout, DefaultLeaseTimeout)
	o.HeartbeatInterval = cmp.Or(o.HeartbeatInterval, o.LeaseTimeout/4)
	o.Retention = cmp.Or(o.Retention, DefaultRetention)
	o.PurgeInterval = cmp.Or(o.PurgeInterval, DefaultPurgeInterval)
	o.BlobChunkSize = cmp.Or(o.BlobChunkSize, DefaultBlobChunkSize)
	o.BlobGrace = cmp.Or(o.BlobGrace, DefaultBlobGrace)
	o.Timeout = cmp.Or(o.Timeout, DefaultTimeout)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	params := cfg.ConnConfig.RuntimeParams
	params["timezone"] = "UTC"
	if params["application_name"] == "" {
		params["application_name"] = "offload"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	q := &Queue{
		pool:       pool,
		connCfg:    cfg.ConnConfig.Copy(),
		opts:       o,
		log:        o.Logger,
		schema:     o.Schema,
		channel:    "offload." + o.Schema,
		sql:        newStatements(pgx.Identifier{o.Schema}.Sanitize()),
		stop:       make(chan struct{}),
		reapNow:    make(chan struct{}, 1),
		noticeKick: make(chan struct{}, 1),
		held:       make(map[heldAttempt]string),
	}
	_, _ = rand.Read(q.owner[:])
	q.ownerHex = hex.EncodeToString(q.owner[:])
	q.shard = int16(binary.BigEndian.Uint16(q.owner[:2])%64) * shardsPerReplica
	q.life, q.kill = context.WithCancel(context.Background())

	err = pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error { return migrate(ctx, c.Conn(), o.Schema) })
	if err != nil {
		q.kill()
		pool.Close()
		return nil, fmt.Errorf("postgres: open: migrate schema %s: %w", o.Schema, err)
	}
	ln, err := q.listen(ctx)
	if err != nil {
		q.kill()
		pool.Close()
		return nil, fmt.Errorf("postgres: open: listen: %w", err)
	}
	q.wg.Add(5)
	go q.noticeLoop()
	go q.listenLoop(ln)
	go q.heartbeatLoop()
	go q.reapLoop()
	go q.purgeLoop()
	q.writes = groupcommit.Start(q.commit)
	return q, nil
}

// Close commits what is pending, stops the queue's goroutines, hands back
// the leases of attempts still running here (they become ready again at
// once, their attempt counted, as after a crash), and closes the
// connections. It is safe to call more than once.
func (q *Queue) Close() error {
	q.closeMu.Do(func() {
		q.mu.Lock()
		q.closed = true
		q.mu.Unlock()
		q.writes.Close() // commits what is queued, then refuses more
		close(q.stop)
		q.wg.Wait()
		ctx, cancel := context.WithTimeout(q.life, 10*time.Second)
		if n, err := q.abandon(ctx); err != nil {
			q.closeErr = fmt.Errorf("postgres: close: hand back leases: %w", err)
		} else if n > 0 {
			q.log.Warn("offload postgres: attempts still running at Close were handed back", "tasks", n)
		}
		if _, err := q.pool.Exec(ctx, q.sql.releaseClaims, q.owner); err != nil && q.closeErr == nil {
			q.closeErr = fmt.Errorf("postgres: close: release delivery claims: %w", err)
		}
		if _, err := q.pool.Exec(ctx, q.sql.dropReplica, q.owner); err != nil && q.closeErr == nil {
			q.closeErr = fmt.Errorf("postgres: close: drop replica record: %w", err)
		}
		cancel()
		q.kill()
		q.pool.Close()
	})
	return q.closeErr
}

// crash stops the queue as a killed process would: no pending write is
// committed, no lease is handed back, the connections just close. Tests
// use it through export_test.go.
func (q *Queue) crash() {
	q.closeMu.Do(func() {
		q.mu.Lock()
		q.closed = true
		q.mu.Unlock()
		q.kill()
		q.writes.Close() // what is queued fails at once: the connections are cut
		close(q.stop)
		q.wg.Wait()
		q.pool.Close()
		q.closeErr = errors.New("postgres: crashed")
	})
}

// bind returns ctx bounded by Options.Timeout and cut short when the
// queue's life ends.
func (q *Queue) bind(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	ctx, cancelTimeout := context.WithTimeout(ctx, q.opts.Timeout)
	stop := context.AfterFunc(q.life, func() { cancel(task.ErrClosed) })
	return ctx, func() { stop(); cancelTimeout(); cancel(nil) }
}

// Schema returns the name of the schema that holds the queue.
func (q *Queue) Schema() string { return q.schema }

// schemaName is the quoted schema name.
func (q *Queue) schemaName() string { return pgx.Identifier{q.schema}.Sanitize() }

func (q *Queue) now() time.Time { return q.opts.Now().UTC().Truncate(time.Microsecond) }

// Subscribe implements queue.Backend. One subscriber at a time is kept:
// the scheduler. It hears of this replica's commits at once and of other
// replicas' through LISTEN/NOTIFY.
func (q *Queue) Subscribe(fn func(queue.Notice)) func() {
	q.mu.Lock()
	q.subscriber = fn
	q.mu.Unlock()
	return func() {
		q.mu.Lock()
		q.subscriber = nil
		q.mu.Unlock()
	}
}

// deliver queues notices for the subscriber. They are passed on by one
// goroutine of the queue's (noticeLoop), in the order queued, so that the
// subscriber never runs on a caller's goroutine (one that may hold its
// own locks around a Lease, say) and never twice at once.
func (q *Queue) deliver(notices []queue.Notice) {
	if len(notices) == 0 {
		return
	}
	q.noticeMu.Lock()
	q.notices = append(q.notices, notices...)
	q.noticeMu.Unlock()
	select {
	case q.noticeKick <- struct{}{}:
	default:
	}
}

func (q *Queue) noticeLoop() {
	defer q.wg.Done()
	for {
		select {
		case <-q.noticeKick:
		case <-q.stop:
			return
		}
		q.noticeMu.Lock()
		batch := q.notices
		q.notices = nil
		q.noticeMu.Unlock()
		q.mu.Lock()
		fn := q.subscriber
		q.mu.Unlock()
		if fn == nil {
			continue
		}
		for _, n := range batch {
			fn(n)
		}
	}
}

// SetDestinations implements queue.Backend: from now on, target's
// finishes on this replica write a delivery for onSuccess (a Succeeded
// task) and onFailure (any other terminal status) when set.
func (q *Queue) SetDestinations(target string, onSuccess, onFailure bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	rules := maps.Clone(q.destinations)
	if rules == nil {
		rules = map[string]uint8{}
	}
	var r uint8
	if onSuccess {
		r |= 1
	}
	if onFailure {
		r |= 2
	}
	rules[target] = r
	q.destinations = rules
}

func (q *Queue) rules() map[string]uint8 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.destinations
}

// op is one write that goes through the committer.
type op interface {
	// reset clears the outcome, before a first or a repeated try.
	reset()
	// fail records err as the op's outcome when the batch failed.
	fail(err error)
}

// submit queues o for the next commit and waits until it is durable (or
// failed: o keeps its own outcome); see groupcommit.Committer.Submit.
func (q *Queue) submit(ctx context.Context, o op) error {
	return q.writes.Submit(ctx, o)
}

// commit writes one batch in one transaction (retried on a deadlock or a
// serialization failure), so that concurrent writers share round trips and
// WAL flushes. A failure is each op's outcome; commit itself never fails.
func (q *Queue) commit(ops []op) (after func(), _ error) {
	var notices []queue.Notice
	var err error
	for try := 1; ; try++ {
		for _, o := range ops {
			o.reset()
		}
		ctx, cancel := context.WithTimeout(q.life, q.opts.Timeout)
		notices, err = q.commitBatch(ctx, ops)
		cancel()
		q.commits.Add(1)
		if err == nil || !retryable(err) || try == maxBatchTries {
			break
		}
		q.log.Debug("offload postgres: commit retried", "err", err)
	}
	if err != nil {
		err = fmt.Errorf("postgres: commit: %w", err)
		if q.life.Err() != nil {
			err = fmt.Errorf("%w: %w", task.ErrClosed, err)
		}
		q.log.Error("offload postgres: commit failed", "ops", len(ops), "err", err)
		for _, o := range ops {
			o.fail(err)
		}
		return nil, nil
	}
	return func() { q.deliver(notices) }, nil
}

// retryable reports whether err aborted a transaction that may simply be
// run again: a deadlock or a serialization failure.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}
