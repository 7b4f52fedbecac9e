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
// concurrency while a lone caller waits about one fsync. At each commit
// the committer keeps the file written with zeros up to 8 MiB beyond the
// pages in use, so that a commit's fsync need not allocate disk blocks: the
// file is that much larger than its data.
//
// # Layout
//
// Records are keyed by a 16-byte ULID (time-ordered). The immutable request
// record is written once; status changes go to a small state record. A
// per-target ready index keyed by (ready time, key) makes the next task one
// cursor seek; a per-target status index and per-status counters serve
// listings and queue depth without scanning. A body its writer streams
// to a blob (the trigger does so past its InlineBodyLimit) lives in a file
// beside the database.
//
// # Encryption at rest
//
// Options.Sealer, when set, encrypts what the queue stores that came from a
// client or a handler: the request of each task (method, URL, headers,
// inline body and captured values, as one sealed part of the job record),
// its blob body, and the response of its latest attempt. [NewAESGCM] makes
// one with AES-256-GCM under keys the application supplies; its output
// names the key ID, so rotating (a new current key, the old ones kept for
// opening) leaves every record readable. Sealed data is bound to its task
// key (a blob segment to its blob and place), so it cannot be moved to
// another record unnoticed; what fails to open wraps [ErrSealed].
//
// What the queue itself works with stays plain: the job record's head
// (caller ID, target, times, idempotency key, blob name), statuses, events,
// errors, progress, logs and delivery history. A database may hold both
// kinds of record: one written before a Sealer was set is read as before,
// and one sealed, read without a Sealer holding its key, is listed without
// its request and response, and the scheduler finishes it Invalid with that
// reason when it leases it. Sealing keeps the files' contents from whoever
// copies them and detects changes to sealed data; it does not stop whoever
// can write the database from adding plain records.
//
// Blob bodies are sealed in 64 KiB segments, so a body of any size is
// written and read in bounded memory; a segment that is changed, moved,
// repeated or missing fails the read.
//
// [Backend] is the seam that the scheduler and trigger use; a second backend
// implements it and passes the conformance suite in queue/queuetest.
package queue
