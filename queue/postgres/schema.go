package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ErrSchemaTooNew is wrapped by Open when the database's schema was
// migrated by a newer version of this package than the running one.
var ErrSchemaTooNew = errors.New("postgres: schema is newer than this version of offload knows")

// Status codes as stored: the position in task.Statuses, 1-based, as the
// bbolt queue stores them. Waiting statuses are 1 (Enqueued) and 3
// (Retrying); leased ones 2 (Running) and 6 (Stopping); terminal ones 4, 5,
// 7, 8 and 9.
//
// migrations are applied in order, each once, in one transaction that
// holds an advisory lock, so that replicas starting together do not race.
// {s} is replaced by the quoted schema name. Never edit a migration that
// has shipped: append a new one.
var migrations = []string{
	// 1: the initial schema.
	`
CREATE TABLE {s}.tasks (
	key              uuid PRIMARY KEY,          -- the task's ULID
	caller_id        text COLLATE "C",          -- a caller-chosen ID; NULL for a generated one
	target           text COLLATE "C" NOT NULL,
	status           smallint NOT NULL,
	attempts         integer NOT NULL DEFAULT 0,
	retry_base       integer NOT NULL DEFAULT 0,
	throttled        integer NOT NULL DEFAULT 0,
	created_at       timestamptz NOT NULL,
	enqueued_at      timestamptz NOT NULL,
	ready_at         timestamptz,               -- set while waiting (Enqueued, Retrying)
	started_at       timestamptz,
	finished_at      timestamptz,               -- set while terminal
	lease_owner      uuid,                      -- the replica running the attempt
	lease_expires_at timestamptz,               -- by the database clock; extended by heartbeats
	idem_key         bytea,                     -- exact bytes: a header may hold any
	fingerprint      bytea,
	blob             text,                      -- the large body's blob, if any
	request          bytea NOT NULL,            -- the request without its body (internal/reqcodec)
	body             bytea,                     -- an inline body
	last_error       text,
	events           jsonb,                     -- NULL until the first change
	response_status  integer,
	response_header  jsonb,
	response_body    bytea,
	response_size    bigint,
	progress         jsonb,
	logs             jsonb,
	deliveries       jsonb
) WITH (fillfactor = 90);

CREATE UNIQUE INDEX tasks_caller_id ON {s}.tasks (caller_id) WHERE caller_id IS NOT NULL;
CREATE UNIQUE INDEX tasks_idem ON {s}.tasks (target, idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX tasks_ready ON {s}.tasks (target, ready_at, key) WHERE status IN (1, 3);
CREATE INDEX tasks_target_status ON {s}.tasks (target, status, key);
CREATE INDEX tasks_status ON {s}.tasks (status, key);
CREATE INDEX tasks_done ON {s}.tasks (finished_at) WHERE status IN (4, 5, 7, 8, 9);
CREATE INDEX tasks_blob ON {s}.tasks (blob) WHERE blob IS NOT NULL;

-- Tasks per target and status, kept in the transactions that change
-- them. Each replica writes shards of its own (one per kind of writer), so
-- that writers do not queue behind one another's row locks; a count is the
-- sum over shards.
CREATE TABLE {s}.counts (
	target text COLLATE "C" NOT NULL,
	status smallint NOT NULL,
	shard  smallint NOT NULL,
	n      bigint NOT NULL,
	PRIMARY KEY (target, status, shard)
);

-- Deliveries owed by finished tasks, written in the transaction that
-- finishes the task. A replica claims the ones it sends.
CREATE TABLE {s}.outbox (
	id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	key              uuid NOT NULL,
	kind             text NOT NULL,             -- 's' onSuccess, 'f' onFailure
	due_at           timestamptz NOT NULL,
	tries            integer NOT NULL DEFAULT 0,
	last_error       text,
	claimed_by       uuid,
	claim_expires_at timestamptz
);
CREATE INDEX outbox_due ON {s}.outbox (due_at, id);
CREATE INDEX outbox_key ON {s}.outbox (key);

-- Large bodies, in chunks of bytea.
CREATE TABLE {s}.blobs (
	name       text PRIMARY KEY,
	touched_at timestamptz NOT NULL,
	size       bigint,
	chunks     integer,
	complete   boolean NOT NULL DEFAULT false
);
CREATE TABLE {s}.blob_chunks (
	name text NOT NULL REFERENCES {s}.blobs (name) ON DELETE CASCADE,
	seq  integer NOT NULL,
	data bytea NOT NULL,
	PRIMARY KEY (name, seq)
);
ALTER TABLE {s}.blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- The latest n elements of a JSON array.
CREATE FUNCTION {s}.jsonb_tail(a jsonb, n integer) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
	SELECT CASE WHEN jsonb_array_length(a) <= n THEN a
	ELSE (SELECT jsonb_agg(e ORDER BY i) FROM jsonb_array_elements(a) WITH ORDINALITY AS x(e, i)
	      WHERE i > jsonb_array_length(a) - n) END
$$;
`,
	// 2: the targets each live replica runs, so that Invalidate leaves the
	// tasks of a target that another replica knows (a rolling deploy that
	// adds a target) alone.
	`
CREATE TABLE {s}.replicas (
	owner      uuid PRIMARY KEY,
	targets    text[] COLLATE "C" NOT NULL,
	expires_at timestamptz NOT NULL          -- by the database clock; extended by heartbeats
);
`,
	// 3: the finish each delivery reports, so that one read before a retry
	// superseded it is not sent with the next finish's record. NULL for
	// the deliveries written before.
	`
ALTER TABLE {s}.outbox ADD COLUMN finished_at timestamptz;
`,
}

// migrate brings the schema to the latest version. Replicas may call it
// at once: the advisory lock makes them take turns, and each finds the
// work of the one before done.
func migrate(ctx context.Context, conn *pgx.Conn, schema string) error {
	return migrateTo(ctx, conn, schema, len(migrations))
}

// migrateTo applies the migrations up to version last.
func migrateTo(ctx context.Context, conn *pgx.Conn, schema string, last int) error {
	quoted := pgx.Identifier{schema}.Sanitize()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey("migrate", schema)); err != nil {
		return err
	}
	// Create the schema only when missing, so that a role without CREATE
	// on the database can use a schema made for it.
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := tx.Exec(ctx, `CREATE SCHEMA `+quoted); err != nil {
			return err
		}
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+quoted+`.schema_migrations (
		version    integer PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return err
	}
	var version int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+quoted+`.schema_migrations`).Scan(&version); err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("%w: version %d, this build knows %d", ErrSchemaTooNew, version, len(migrations))
	}
	for v := version + 1; v <= last; v++ {
		if _, err := tx.Exec(ctx, strings.ReplaceAll(migrations[v-1], "{s}", quoted)); err != nil {
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+quoted+`.schema_migrations (version) VALUES ($1)`, v); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// lockKey is the advisory lock key of a named lock within schema.
func lockKey(name, schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("offload/" + name + "/" + schema))
	return int64(h.Sum64())
}
