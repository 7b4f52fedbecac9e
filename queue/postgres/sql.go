package postgres

import (
	"fmt"
	"strings"
)

// rowCols are the columns of a task that a status change reads (see row).
const rowCols = `key, caller_id, target, status, attempts, retry_base, throttled, created_at, enqueued_at,
	ready_at, started_at, finished_at, lease_owner, last_error, events, deliveries`

// taskCols are the columns a task.Task is built from (see scanTask).
// reapStopping selects, of the Stopping tasks, those that the replica
// whose targets are the parameter %[1]s may end with their deliveries: of
// its own targets, or of targets that no replica lists any more (a dead
// one's record stays an hour, time for it to come back); none before it
// registered (NULL).
const reapStopping = `(target = ANY(%[1]s::text[]) OR (%[1]s::text[] IS NOT NULL AND NOT EXISTS
	(SELECT 1 FROM {s}.replicas p WHERE target = ANY(p.targets))))`

const taskCols = `key, caller_id, target, status, attempts, retry_base, created_at, enqueued_at, ready_at,
	started_at, finished_at, last_error, events, request, response_status, response_header, response_body,
	response_size, progress, logs, deliveries`

// statements holds every statement with the schema filled in. Statements
// that lock several task rows lock them in key order (ORDER BY key ...
// FOR UPDATE), or skip locked ones, and counts are written last, in
// (target, status) order, so that concurrent transactions cannot deadlock.
type statements struct {
	tasks                 string // the table, for listings built per call
	insert, insertOrSkip  string
	existing              string
	lockRows              string
	lockByKey, lockByID   string
	lockOutbox            string
	advisoryLocks         string
	liveCounts            string
	update                string
	outboxAdd, outboxDone string
	outboxDrop            string
	outboxRetry           string
	counts                string
	notify                string

	lease, next string

	heartbeat, extendClaims, releaseClaims string
	reap, nextExpiry, abandon              string
	waitingTargets, invalidate             string
	registered                             string
	registerTargets, extendReplica         string
	dropReplica, sweepReplicas             string
	purge, deleteBlobs, sweepBlobs         string

	getByKey, getByID string
	countTasks        string

	claimDeliveries, nextDelivery string

	blobChunk, blobClose, blobRemove, blobInfo, blobRead string
}

func newStatements(schema string) statements {
	r := strings.NewReplacer("{s}", schema, "{rowCols}", rowCols, "{taskCols}", taskCols)
	s := func(q string) string { return r.Replace(q) }
	const insert = `INSERT INTO {s}.tasks (key, caller_id, target, status, created_at, enqueued_at, ready_at,
			idem_key, fingerprint, blob, request, body)
		SELECT u.key, u.caller_id, u.target, 1, u.created_at, u.created_at, u.ready_at,
			u.idem_key, u.fingerprint, u.blob, u.request, u.body
		FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::bytea[],
			$7::bytea[], $8::text[], $9::bytea[], $10::bytea[])
			AS u(key, caller_id, target, created_at, ready_at, idem_key, fingerprint, blob, request, body)`
	return statements{
		tasks:  s("{s}.tasks"),
		insert: s(insert),
		// A caller ID or idempotency key that another replica committed
		// meanwhile: the row is skipped, and the committer looks again.
		insertOrSkip: s(insert + ` ON CONFLICT DO NOTHING RETURNING key`),
		existing: s(`SELECT key, caller_id, target, idem_key, fingerprint FROM {s}.tasks WHERE caller_id = ANY($1::text[])
			UNION
			SELECT t.key, t.caller_id, t.target, t.idem_key, t.fingerprint
			FROM {s}.tasks t JOIN unnest($2::text[], $3::bytea[]) AS u(target, idem)
				ON t.target = u.target AND t.idem_key = u.idem
			WHERE t.idem_key IS NOT NULL`),
		lockRows:   s(`SELECT {rowCols} FROM {s}.tasks WHERE key = ANY($1::uuid[]) ORDER BY key FOR UPDATE`),
		lockByKey:  s(`SELECT {rowCols} FROM {s}.tasks WHERE key = $1 AND caller_id IS NULL FOR UPDATE`),
		lockByID:   s(`SELECT {rowCols} FROM {s}.tasks WHERE caller_id = $1 FOR UPDATE`),
		lockOutbox: s(`SELECT id FROM {s}.outbox WHERE id = ANY($1::int8[]) ORDER BY id FOR UPDATE`),
		// MaxQueued: enqueuers of a target take turns, so that the count
		// they check cannot change under them (finishes only lower it).
		advisoryLocks: `SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS k`,
		liveCounts: s(`SELECT target, sum(n)::int8 FROM {s}.counts
			WHERE target = ANY($1::text[]) AND status IN (1, 2, 3, 6) GROUP BY target`),
		update: s(`UPDATE {s}.tasks AS t SET
			status = u.status, attempts = u.attempts, retry_base = u.retry_base, throttled = u.throttled,
			enqueued_at = u.enqueued_at, ready_at = u.ready_at, started_at = u.started_at, finished_at = u.finished_at,
			lease_owner = CASE u.lease_mode WHEN 2 THEN t.lease_owner ELSE u.lease_owner END,
			lease_expires_at = CASE u.lease_mode WHEN 0 THEN NULL
				WHEN 1 THEN now() + $22::int8 * interval '1 microsecond' ELSE t.lease_expires_at END,
			last_error = u.last_error, events = u.events, deliveries = u.deliveries,
			response_status = CASE WHEN u.set_response THEN u.response_status ELSE t.response_status END,
			response_header = CASE WHEN u.set_response THEN u.response_header ELSE t.response_header END,
			response_body = CASE WHEN u.set_response THEN u.response_body ELSE t.response_body END,
			response_size = CASE WHEN u.set_response THEN u.response_size ELSE t.response_size END,
			progress = coalesce(u.progress, t.progress),
			logs = CASE WHEN u.add_logs IS NULL THEN t.logs
				ELSE {s}.jsonb_tail(coalesce(t.logs, '[]'::jsonb) || u.add_logs, 100) END
		FROM unnest($1::uuid[], $2::int2[], $3::int4[], $4::int4[], $5::int4[], $6::timestamptz[], $7::timestamptz[],
			$8::timestamptz[], $9::timestamptz[], $10::uuid[], $11::int2[], $12::text[], $13::jsonb[], $14::jsonb[],
			$15::bool[], $16::int4[], $17::jsonb[], $18::bytea[], $19::int8[], $20::jsonb[], $21::jsonb[])
			AS u(key, status, attempts, retry_base, throttled, enqueued_at, ready_at, started_at, finished_at,
				lease_owner, lease_mode, last_error, events, deliveries, set_response, response_status,
				response_header, response_body, response_size, progress, add_logs)
		WHERE t.key = u.key`),
		outboxAdd: s(`INSERT INTO {s}.outbox (key, kind, due_at, finished_at)
			SELECT u.key, u.kind, u.at, u.at FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS u(key, kind, at)`),
		outboxDone: s(`DELETE FROM {s}.outbox WHERE id = ANY($1::int8[])`),
		outboxDrop: s(`DELETE FROM {s}.outbox WHERE key = ANY($1::uuid[])`),
		outboxRetry: s(`UPDATE {s}.outbox AS o SET due_at = u.due, tries = u.tries, last_error = u.err,
				claimed_by = NULL, claim_expires_at = NULL
			FROM unnest($1::int8[], $2::timestamptz[], $3::int4[], $4::text[]) AS u(id, due, tries, err)
			WHERE o.id = u.id`),
		counts: s(`INSERT INTO {s}.counts (target, status, shard, n)
			SELECT u.t, u.s, $4, u.d FROM unnest($1::text[], $2::int2[], $3::int8[]) AS u(t, s, d)
			ON CONFLICT (target, status, shard) DO UPDATE SET n = {s}.counts.n + excluded.n`),
		notify: `SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p`,

		// The oldest ready tasks of each requested target, skipping those
		// another transaction holds (another replica leasing them).
		lease: s(`SELECT c.* FROM unnest($1::text[], $2::int4[]) AS r(target, max)
			CROSS JOIN LATERAL (
				SELECT {rowCols}, request, body FROM {s}.tasks t
				WHERE t.target = r.target AND t.status IN (1, 3) AND t.ready_at <= $3
				ORDER BY t.ready_at, t.key LIMIT r.max
				FOR UPDATE SKIP LOCKED
			) AS c`),
		next: s(`SELECT r.target, n.ready_at FROM unnest($1::text[]) AS r(target)
			CROSS JOIN LATERAL (
				SELECT ready_at FROM {s}.tasks t WHERE t.target = r.target AND t.status IN (1, 3)
				ORDER BY t.ready_at LIMIT 1
			) AS n`),

		heartbeat: s(`UPDATE {s}.tasks AS t SET lease_expires_at = now() + $3::int8 * interval '1 microsecond'
			FROM (SELECT key FROM {s}.tasks WHERE key = ANY($1::uuid[]) AND lease_owner = $2 AND status IN (2, 6)
				ORDER BY key FOR UPDATE) AS l
			WHERE t.key = l.key
			RETURNING t.key, t.attempts, t.status`),
		// Outbox rows are locked in id order, as the committer's
		// lockOutbox locks them, so that the two never deadlock.
		extendClaims: s(`UPDATE {s}.outbox AS o SET claim_expires_at = now() + $2::int8 * interval '1 microsecond'
			FROM (SELECT id FROM {s}.outbox WHERE claimed_by = $1 ORDER BY id FOR UPDATE) AS l WHERE o.id = l.id`),
		releaseClaims: s(`UPDATE {s}.outbox AS o SET claimed_by = NULL, claim_expires_at = NULL
			FROM (SELECT id FROM {s}.outbox WHERE claimed_by = $1 ORDER BY id FOR UPDATE) AS l WHERE o.id = l.id`),
		// A Stopping task ends with its delivery, whose rules only a replica
		// that runs its target has (see Queue.known): $2 are this replica's
		// targets, NULL before it registered them. One that no live replica
		// runs has no delivery to owe.
		reap: s(`SELECT {rowCols} FROM {s}.tasks WHERE (status = 2 OR (status = 6 AND ` + fmt.Sprintf(reapStopping, "$2") + `))
			AND lease_expires_at < now() ORDER BY key LIMIT $1 FOR UPDATE SKIP LOCKED`),
		nextExpiry: s(`SELECT extract(epoch FROM min(lease_expires_at) - now())::float8 FROM {s}.tasks
			WHERE status = 2 OR (status = 6 AND ` + fmt.Sprintf(reapStopping, "$1") + `)`),
		// Whether any replica is live, and whether one runs target $1.
		registered: s(`SELECT EXISTS (SELECT 1 FROM {s}.replicas WHERE expires_at > now()),
			EXISTS (SELECT 1 FROM {s}.replicas WHERE expires_at > now() AND $1 = ANY(targets))`),
		abandon: s(`SELECT {rowCols} FROM {s}.tasks WHERE lease_owner = $1 AND status IN (2, 6)
			ORDER BY key FOR UPDATE`),
		// Targets with waiting tasks that neither the caller nor another
		// live replica runs.
		waitingTargets: s(`SELECT target FROM {s}.counts WHERE status IN (1, 3) GROUP BY target HAVING sum(n) > 0
			EXCEPT SELECT unnest(targets) FROM {s}.replicas WHERE expires_at > now()`),
		registerTargets: s(`INSERT INTO {s}.replicas (owner, targets, expires_at)
			VALUES ($1, $2, now() + $3::int8 * interval '1 microsecond')
			ON CONFLICT (owner) DO UPDATE SET targets = excluded.targets, expires_at = excluded.expires_at`),
		extendReplica: s(`UPDATE {s}.replicas SET expires_at = now() + $2::int8 * interval '1 microsecond' WHERE owner = $1`),
		dropReplica:   s(`DELETE FROM {s}.replicas WHERE owner = $1 OR expires_at < now() - interval '1 hour'`),
		sweepReplicas: s(`DELETE FROM {s}.replicas WHERE expires_at < now() - interval '1 hour'`),
		invalidate: s(`SELECT {rowCols} FROM {s}.tasks WHERE status IN (1, 3) AND target = ANY($1::text[])
			ORDER BY key LIMIT $2 FOR UPDATE`),
		purge: s(`WITH v AS (
				SELECT key FROM {s}.tasks t
				WHERE status IN (4, 5, 7, 8, 9) AND finished_at < $1
					AND NOT EXISTS (SELECT 1 FROM {s}.outbox o WHERE o.key = t.key)
				ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)
			DELETE FROM {s}.tasks AS t USING v WHERE t.key = v.key
			RETURNING t.target, t.status, t.blob`),
		deleteBlobs: s(`DELETE FROM {s}.blobs WHERE name = ANY($1::text[])`),
		sweepBlobs: s(`DELETE FROM {s}.blobs AS b
			WHERE touched_at < now() - $1::int8 * interval '1 microsecond'
				AND NOT EXISTS (SELECT 1 FROM {s}.tasks t WHERE t.blob = b.name)`),

		getByKey:   s(`SELECT {taskCols}, body FROM {s}.tasks WHERE key = $1 AND caller_id IS NULL`),
		getByID:    s(`SELECT {taskCols}, body FROM {s}.tasks WHERE caller_id = $1`),
		countTasks: s(`SELECT target, status, sum(n)::int8 FROM {s}.counts GROUP BY target, status HAVING sum(n) <> 0`),

		// Deliveries due, that no other live replica has claimed; this
		// replica claims them until FinishDelivery or its heartbeat stops.
		claimDeliveries: s(`UPDATE {s}.outbox AS o SET claimed_by = $2, claim_expires_at = now() + $3::int8 * interval '1 microsecond'
			FROM (SELECT id, key FROM {s}.outbox
				WHERE due_at <= $1 AND (claimed_by IS NULL OR claimed_by = $2 OR claim_expires_at < now())
					AND (due_at, id) > ($4, $5)
				ORDER BY due_at, id LIMIT $6 FOR UPDATE SKIP LOCKED) AS c
			LEFT JOIN {s}.tasks AS t ON t.key = c.key
			WHERE o.id = c.id
			RETURNING o.id, o.key, o.kind, o.tries, o.due_at, o.finished_at, t.caller_id, t.target`),
		nextDelivery: s(`SELECT
				(SELECT min(due_at) FROM {s}.outbox WHERE due_at > $1),
				(SELECT extract(epoch FROM min(claim_expires_at) - now())::float8 FROM {s}.outbox
					WHERE due_at <= $1 AND claimed_by <> $2 AND claim_expires_at >= now())`),

		blobChunk: s(`WITH b AS (
				INSERT INTO {s}.blobs (name, touched_at) VALUES ($1, now())
				ON CONFLICT (name) DO UPDATE SET touched_at = now()
				RETURNING name)
			INSERT INTO {s}.blob_chunks (name, seq, data) SELECT name, $2, $3 FROM b`),
		blobClose: s(`INSERT INTO {s}.blobs (name, touched_at, size, chunks, complete) VALUES ($1, now(), $2, $3, true)
			ON CONFLICT (name) DO UPDATE SET touched_at = now(), size = $2, chunks = $3, complete = true`),
		blobRemove: s(`DELETE FROM {s}.blobs WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM {s}.tasks WHERE blob = $1)`),
		blobInfo:   s(`SELECT size, chunks, complete FROM {s}.blobs WHERE name = $1`),
		blobRead:   s(`SELECT data FROM {s}.blob_chunks WHERE name = $1 AND seq = $2`),
	}
}
