package postgres_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/oklog/ulid/v2"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// backlogSize is the number of tasks BenchmarkBacklog reads among.
const backlogSize = 1_000_000

// BenchmarkBacklog: reads and a lease against a queue that holds a
// million tasks (filled in SQL, spread over 10 targets, waiting and
// finished in every such status, a tenth of them with caller IDs), to show
// that they walk indexes.
//
//	bash .ci/postgres -run '^$' -bench Backlog
func BenchmarkBacklog(b *testing.B) {
	schema := newSchema(b)
	q := openAt(b, schema, nil)
	start := time.Now()
	fillBacklog(b, schema)
	b.Logf("filled %d tasks in %s", backlogSize, time.Since(start).Round(time.Second))
	ctx := context.Background()

	// Some tasks to look up: generated and caller-chosen IDs.
	var gen, named string
	row := admin.pool.QueryRow(ctx, "SELECT key FROM "+pgx.Identifier{schema, "tasks"}.Sanitize()+" WHERE caller_id IS NULL OFFSET 500000 LIMIT 1")
	var key [16]byte
	if err := row.Scan(&key); err != nil {
		b.Fatal(err)
	}
	gen = keyString(key)
	named = "order_500001"

	for _, bc := range []struct {
		name string
		fn   func() error
	}{
		{"Query/generated", func() error { _, err := task.Query(ctx, q, gen); return err }},
		{"Query/caller", func() error { _, err := task.Query(ctx, q, named); return err }},
		{"List/newest", func() error { _, err := task.List(ctx, q, task.Filter{Limit: 20}); return err }},
		{"List/status", func() error {
			_, err := task.List(ctx, q, task.Filter{Statuses: []task.Status{task.Failed}, Limit: 20})
			return err
		}},
		{"List/target+statuses", func() error {
			_, err := task.List(ctx, q, task.Filter{Target: "t3", Statuses: []task.Status{task.Enqueued, task.Retrying, task.Failed}, Limit: 20})
			return err
		}},
		{"List/target/oldest", func() error {
			_, err := task.List(ctx, q, task.Filter{Target: "t7", Order: task.OldestFirst, Limit: 20})
			return err
		}},
		{"List/since", func() error {
			_, err := task.List(ctx, q, task.Filter{Since: time.Now().Add(-30 * time.Minute), Limit: 20})
			return err
		}},
		{"List/callerPrefix", func() error { _, err := task.List(ctx, q, task.Filter{IDPrefix: "order_77", Limit: 20}); return err }},
		{"Counts", func() error { _, err := task.Counts(ctx, q); return err }},
		{"LeaseFinish", func() error {
			res, err := q.Lease(ctx, time.Now(), []queue.LeaseRequest{{Target: "t5", Max: 1}})
			if err != nil || len(res.Leases) != 1 {
				return fmt.Errorf("lease: %v, %v", res, err)
			}
			_, err = q.Finish(ctx, res.Leases[0], queue.Outcome{Status: task.Succeeded})
			return err
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if err := bc.fn(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// keyString is the generated task ID of key k.
func keyString(k [16]byte) string { return ulid.ULID(k).String() }

// fillBacklog inserts backlogSize tasks in SQL, in batches, with their
// counters: a third waiting (ready an hour ago), the rest finished in
// each terminal status, created over the last hour.
func fillBacklog(b *testing.B, schema string) {
	ctx := context.Background()
	tasks := pgx.Identifier{schema, "tasks"}.Sanitize()
	counts := pgx.Identifier{schema, "counts"}.Sanitize()
	head := reqcodec.Append(nil, &reqcodec.Request{Method: http.MethodPost, RequestURI: "/jobs", Header: http.Header{"Content-Type": {"application/json"}}, BodySize: 2})
	const batch = 100_000
	for lo := 0; lo < backlogSize; lo += batch {
		_, err := admin.pool.Exec(ctx, `
			INSERT INTO `+tasks+` (key, caller_id, target, status, attempts, created_at, enqueued_at, ready_at, finished_at, request, body, events)
			SELECT
				-- a ULID: 48 bits of milliseconds, then 80 random bits
				(lpad(to_hex((extract(epoch FROM c) * 1000)::int8), 12, '0') || substr(md5(g::text), 1, 20))::uuid,
				CASE WHEN g % 10 = 1 THEN 'order_' || g END,
				't' || (g % 10), s, CASE WHEN s = 1 THEN 0 ELSE 1 END, c, c,
				CASE WHEN s IN (1, 3) THEN c END,
				CASE WHEN s IN (4, 5, 7, 8, 9) THEN c + interval '1 second' END,
				$3, '{}'::bytea, NULL
			FROM generate_series($1::int, $2::int) AS g,
				LATERAL (SELECT now() - interval '1 hour' + g * interval '3 milliseconds' AS c,
					(ARRAY[1, 4, 4, 5, 1, 3, 7, 8, 9, 4])[1 + (g / 10) % 10] AS s) AS x`,
			lo+1, lo+batch, head)
		if err != nil {
			b.Fatal(err)
		}
	}
	if _, err := admin.pool.Exec(ctx, `INSERT INTO `+counts+` (target, status, shard, n)
		SELECT target, status, 1000, count(*) FROM `+tasks+` GROUP BY target, status`); err != nil {
		b.Fatal(err)
	}
	if _, err := admin.pool.Exec(ctx, "ANALYZE "+tasks); err != nil {
		b.Fatal(err)
	}
}
