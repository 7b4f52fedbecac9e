// Package queue is offload's durable store: an embedded bbolt database that
// holds every accepted async request until it has run, and the record of
// what happened to it afterwards.
//
// Open it once per process (bbolt allows one process per file) and hand it
// to the scheduler and to the task helpers:
//
//	db, err := queue.Open("offload.db", nil)
//	if err != nil { ... }
//	defer db.Close()
//	t, err := task.Query(ctx, db, id)
//
// # Durability and group commit
//
// Every write goes through one committer goroutine: it takes everything
// queued since its last commit and writes it in one bbolt transaction, with
// one fsync, and only then releases the callers. An Enqueue that returns nil
// is on disk. Concurrent callers share fsyncs, so throughput grows with
// concurrency while a lone caller waits about one fsync.
//
// # Layout
//
// Records are keyed by a 16-byte ULID (time-ordered). The immutable request
// record is written once; status changes go to a small state record. A
// per-target ready index keyed by (ready time, key) makes the next task one
// cursor seek; a per-target status index and per-status counters serve
// listings and queue depth without scanning. Bodies above
// Options.InlineBodyLimit live in blob files beside the database.
//
// [Backend] is the seam that the scheduler and trigger use; a second backend
// implements it and passes the conformance suite in queue/queuetest.
package queue
