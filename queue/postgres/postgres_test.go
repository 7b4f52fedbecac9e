package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/queue/postgres"
	"github.com/offload-go/offload/queue/queuetest"
	"github.com/offload-go/offload/task"
)

// urlEnv names the database the tests run against. .ci/postgres starts a
// throwaway cluster and sets it.
const urlEnv = "OFFLOAD_POSTGRES_URL"

var admin struct {
	once sync.Once
	pool *pgxpool.Pool
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	printRatios()
	if admin.pool != nil {
		admin.pool.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// dbURL returns the test database's URL. The tests fail, never skip,
// without a reachable database: in CI that is a broken setup, and locally
// the message says how to get one.
func dbURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv(urlEnv)
	if url == "" {
		t.Fatalf("%s is not set. These tests need a PostgreSQL server: from the repository root, run\n\tbash .ci/postgres\nwhich starts a throwaway cluster, runs them and stops it; or set %s to a database you can drop schemas in.", urlEnv, urlEnv)
	}
	admin.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		admin.pool, admin.err = pgxpool.New(ctx, url)
		if admin.err == nil {
			admin.err = admin.pool.Ping(ctx)
		}
	})
	if admin.err != nil {
		t.Fatalf("PostgreSQL at %s=%q is unreachable: %v\n(run `bash .ci/postgres` from the repository root to start a throwaway cluster)", urlEnv, url, admin.err)
	}
	return url
}

var notIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// newSchema returns a schema name of the test's own, dropped when the test
// ends, so that tests run in parallel on one database.
func newSchema(t testing.TB) string {
	t.Helper()
	dbURL(t)
	var r [4]byte
	_, _ = rand.Read(r[:])
	name := notIdent.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 30 {
		name = name[len(name)-30:]
	}
	schema := "t_" + name + "_" + hex.EncodeToString(r[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return schema
}

func testLogger(t testing.TB) *slog.Logger {
	if tt, ok := t.(interface{ Output() io.Writer }); ok {
		return slog.New(slog.NewTextHandler(tt.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

// openAt opens a queue on schema; on cleanup it runs the checker, failing
// the test on any disagreement, then closes the queue.
func openAt(t testing.TB, schema string, opts *postgres.Options) *postgres.Queue {
	t.Helper()
	var o postgres.Options
	if opts != nil {
		o = *opts
	}
	o.Schema = schema
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, err := postgres.Open(ctx, dbURL(t), &o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil && !strings.Contains(err.Error(), "crashed") {
			t.Error(err)
		}
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := q.Check(ctx); err != nil && !errors.Is(err, task.ErrClosed) {
			t.Error(err)
		}
	})
	return q
}

// openQueue opens a queue on a schema of the test's own.
func openQueue(t testing.TB, opts *postgres.Options) *postgres.Queue {
	t.Helper()
	return openAt(t, newSchema(t), opts)
}

func TestConformance(t *testing.T) {
	queuetest.Run(t, func(t *testing.T) queue.Backend { return openQueue(t, nil) })
}
