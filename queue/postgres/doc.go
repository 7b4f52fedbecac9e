// Package postgres is an offload queue backend on PostgreSQL, for services
// that run several replicas: every replica opens the same schema, any of
// them accepts, any runs, and task.Query on any sees every task.
//
//	q, err := postgres.Open(ctx, "postgres://offload@db/app", nil)
//	if err != nil { ... }
//	defer q.Close()
//	sched, err := invoke.New(q, nil)
//
// It implements queue.Backend, and passes the conformance suite in
// queue/queuetest as the embedded bbolt queue does. It lives in a module
// of its own so that importers of offload's core never download pgx.
//
// # Design
//
// Open creates the schema (Options.Schema) and applies versioned
// migrations, each in a transaction holding an advisory lock, so replicas
// starting together take turns.
//
// Enqueues go through one committer goroutine per replica, which writes
// every enqueue (and finish, report, delivery record) queued since its
// last commit in one transaction: a multi-row INSERT ... SELECT FROM
// unnest(...), sent with BEGIN and COMMIT in one pipelined round trip.
// Concurrent callers share round trips and WAL flushes. Caller-chosen IDs
// and idempotency keys are unique indexes; a race between replicas is
// settled by ON CONFLICT DO NOTHING and a second look. MaxQueued is held
// exactly by an advisory lock per target that enqueuers take in turn.
//
// Lease takes the oldest ready tasks of each target with SELECT ... FOR
// UPDATE SKIP LOCKED, so replicas never wait for one another, and stamps
// each with a lease: this replica's owner ID and an expiry by the
// database's clock. A heartbeat extends the leases of the attempts still
// running every Options.HeartbeatInterval. Every replica reaps expired
// leases (a dead replica's), making their tasks ready again, within about
// Options.LeaseTimeout. A task that was Stopping is ended Stopped, with
// its delivery, by a replica whose scheduler has registered its target
// (Invalidate): only that one knows its destinations (or by any, once no
// replica has listed the target for an hour). Finish and Report are fenced on the attempt and
// the lease owner: an attempt whose lease was lost gets task.ErrLeaseLost
// and its heartbeat cancels it.
//
// Every commit that makes a task ready, asks a running task to stop, or
// owes a delivery sends NOTIFY on the schema's channel; each replica
// LISTENs on its own connection and passes other replicas' notices to its
// scheduler, so nothing polls. Its own are passed on right after commit.
// The subscriber is always called from one goroutine of the queue's.
//
// Finished tasks owe their deliveries through an outbox written in the
// same transaction; a replica claims the deliveries it sends, so each goes
// out from one replica at a time, and a dead replica's are taken over.
// Invalidate spares the targets that another live replica runs.
//
// Listings walk indexes in key (creation) order with key cursors; depth
// counts come from a counters table kept in the same transactions, one
// row per target, status and replica shard. Bodies too large to keep
// inline are stored as bytea chunks, written as the upload arrives.
// Strings that handlers and clients write are cleaned of what text and
// jsonb refuse (NUL, invalid UTF-8), so that one odd string cannot fail
// other tasks' writes; every operation is bounded by Options.Timeout, so
// that a stalled server fails writes instead of hanging them.
//
// See README.md for running the tests and the benchmark figures.
package postgres
