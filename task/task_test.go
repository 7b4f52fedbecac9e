package task_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/quick"
	"time"
	"unicode/utf8"

	"go.uber.org/goleak"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestCheckTransition(t *testing.T) {
	t.Parallel()
	// The state machine, written out independently of the code under test.
	legal := map[[2]task.Status]bool{}
	for _, p := range [][2]task.Status{
		{task.Enqueued, task.Running}, {task.Enqueued, task.Stopped}, {task.Enqueued, task.Expired}, {task.Enqueued, task.Invalid},
		{task.Running, task.Succeeded}, {task.Running, task.Failed}, {task.Running, task.Retrying}, {task.Running, task.Stopping},
		{task.Running, task.Expired}, {task.Running, task.Invalid}, {task.Running, task.Enqueued},
		{task.Retrying, task.Running}, {task.Retrying, task.Stopped}, {task.Retrying, task.Expired}, {task.Retrying, task.Invalid},
		{task.Stopping, task.Stopped},
		{task.Failed, task.Enqueued}, {task.Stopped, task.Enqueued}, {task.Expired, task.Enqueued}, {task.Invalid, task.Enqueued},
	} {
		legal[p] = true
	}
	all := append(slices.Clone(task.Statuses), "", "Bogus", "running")
	for _, from := range all {
		for _, to := range all {
			err := task.CheckTransition(from, to)
			switch {
			case legal[[2]task.Status{from, to}] && err != nil:
				t.Errorf("CheckTransition(%q, %q) = %v, want nil", from, to, err)
			case !legal[[2]task.Status{from, to}] && !errors.Is(err, task.ErrInvalidTransition):
				t.Errorf("CheckTransition(%q, %q) = %v, want ErrInvalidTransition", from, to, err)
			}
		}
	}
}

func TestStatusPredicates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		s                          task.Status
		valid, terminal, retryable bool
	}{
		{task.Enqueued, true, false, false},
		{task.Running, true, false, false},
		{task.Retrying, true, false, false},
		{task.Stopping, true, false, false},
		{task.Succeeded, true, true, false},
		{task.Failed, true, true, true},
		{task.Stopped, true, true, true},
		{task.Expired, true, true, true},
		{task.Invalid, true, true, true},
		{"", false, false, false},
		{"succeeded", false, false, false},
	}
	for _, tt := range tests {
		if got := tt.s.Valid(); got != tt.valid {
			t.Errorf("%q.Valid() = %v", tt.s, got)
		}
		if got := tt.s.Terminal(); got != tt.terminal {
			t.Errorf("%q.Terminal() = %v", tt.s, got)
		}
		if got := tt.s.Retryable(); got != tt.retryable {
			t.Errorf("%q.Retryable() = %v", tt.s, got)
		}
	}
	if len(task.Statuses) != 9 {
		t.Errorf("%d statuses, want FC's 9", len(task.Statuses))
	}
}

func TestParseStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want task.Status
		ok   bool
	}{
		{"Enqueued", task.Enqueued, true},
		{"running", task.Running, true},
		{"RETRYING", task.Retrying, true},
		{"sUcCeEdEd", task.Succeeded, true},
		{"Failed", task.Failed, true},
		{"stopping", task.Stopping, true},
		{"Stopped", task.Stopped, true},
		{"expired", task.Expired, true},
		{"Invalid", task.Invalid, true},
		{"", "", false},
		{"Done", "", false},
		{" Running", "", false},
		{"Running,Failed", "", false},
	}
	for _, tt := range tests {
		got, err := task.ParseStatus(tt.in)
		if tt.ok && (err != nil || got != tt.want) {
			t.Errorf("ParseStatus(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
		if !tt.ok && !errors.Is(err, task.ErrInvalidFilter) {
			t.Errorf("ParseStatus(%q) = %q, %v; want ErrInvalidFilter", tt.in, got, err)
		}
	}
}

func TestCheckID(t *testing.T) {
	t.Parallel()
	gen := task.NewID(time.Now())
	tests := []struct {
		id                           string
		checkID, callerID, generated bool
	}{
		{gen, true, false, true},
		{strings.ToLower(gen), true, false, true}, // ULIDs parse in any case
		{"01ARZ3NDEKTSV4RRFFQ69G5FAV", true, false, true},
		{"7ZZZZZZZZZZZZZZZZZZZZZZZZZ", true, false, true}, // the largest ULID
		{"8ZZZZZZZZZZZZZZZZZZZZZZZZZ", false, false, false},
		{"01ARZ3NDEKTSV4RRFFQ69G5FA", false, false, false},   // 25 characters
		{"01ARZ3NDEKTSV4RRFFQ69G5FAVX", false, false, false}, // 27
		{"01ARZ3NDEKTSV4RRFFQ69G5FAU", false, false, false},  // U is not Crockford base 32
		{"a", true, true, false},
		{"_", true, true, false},
		{"Z", true, true, false},
		{"order_42", true, true, false},
		{"Order-42_x", true, true, false},
		{"_-_-", true, true, false},
		{"ABCDEFGHJKMNPQRSTVWXYZ0123", true, true, false}, // ULID-sized, but starts with a letter
		{strings.Repeat("x", task.MaxIDLen), true, true, false},
		{strings.Repeat("x", task.MaxIDLen+1), false, false, false},
		{"", false, false, false},
		{"1abc", false, false, false},
		{"-abc", false, false, false},
		{"a.b", false, false, false},
		{"a/b", false, false, false},
		{"../etc", false, false, false},
		{"a b", false, false, false},
		{"a\x00", false, false, false},
		{"café", false, false, false},
	}
	for _, tt := range tests {
		if err := task.CheckID(tt.id); (err == nil) != tt.checkID || (err != nil && !errors.Is(err, task.ErrInvalidID)) {
			t.Errorf("CheckID(%q) = %v, want ok %v", tt.id, err, tt.checkID)
		}
		if err := task.CheckCallerID(tt.id); (err == nil) != tt.callerID || (err != nil && !errors.Is(err, task.ErrInvalidID)) {
			t.Errorf("CheckCallerID(%q) = %v, want ok %v", tt.id, err, tt.callerID)
		}
		if got := task.IsGenerated(tt.id); got != tt.generated {
			t.Errorf("IsGenerated(%q) = %v, want %v", tt.id, got, tt.generated)
		}
	}
	// The error of a very long ID does not repeat it whole.
	if err := task.CheckCallerID(strings.Repeat("é", 1000)); err == nil || len(err.Error()) > 200 {
		t.Errorf("CheckCallerID(long) = %v", err)
	}
}

func TestCheckTarget(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"a", "transcode", "video.transcode", "v2:resize-img_x", "0", strings.Repeat("t", task.MaxIDLen)} {
		if err := task.CheckTarget(ok); err != nil {
			t.Errorf("CheckTarget(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "a/b", "a\x00b", "ü", "a\nb", strings.Repeat("t", task.MaxIDLen+1)} {
		if err := task.CheckTarget(bad); !errors.Is(err, task.ErrInvalidID) {
			t.Errorf("CheckTarget(%q) = %v, want ErrInvalidID", bad, err)
		}
	}
}

// maxULIDTime is the last millisecond a ULID can hold.
const maxULIDTime = 1<<48 - 1

func TestNewIDOrder(t *testing.T) {
	t.Parallel()
	// IDs of distinct milliseconds sort as their times do, and always have
	// the generated form.
	prop := func(a, b uint64) bool {
		ta, tb := time.UnixMilli(int64(a%maxULIDTime)), time.UnixMilli(int64(b%maxULIDTime))
		ia, ib := task.NewID(ta), task.NewID(tb)
		if !task.IsGenerated(ia) || !task.IsGenerated(ib) || task.CheckID(ia) != nil {
			return false
		}
		switch {
		case ta.Before(tb):
			return ia < ib
		case tb.Before(ta):
			return ib < ia
		}
		return ia[:10] == ib[:10] // the same millisecond: the same time part
	}
	if err := quick.Check(prop, &quick.Config{MaxCount: 5000}); err != nil {
		t.Error(err)
	}
	// Within one millisecond the random part makes them distinct.
	now := time.Now()
	seen := map[string]bool{}
	for range 1000 {
		id := task.NewID(now)
		if seen[id] {
			t.Fatalf("NewID repeated %s", id)
		}
		seen[id] = true
	}
	// NewULID is the binary form of NewID's time part.
	if u := task.NewULID(now); u.Time() != uint64(now.UnixMilli()) {
		t.Errorf("NewULID time = %d, want %d", u.Time(), now.UnixMilli())
	}
}

// fakeStore is a task.Store whose methods are fields.
type fakeStore struct {
	GetTaskFunc    func(ctx context.Context, id string) (*task.Task, error)
	ListTasksFunc  func(ctx context.Context, f task.Filter) (*task.Page, error)
	StopTaskFunc   func(ctx context.Context, id string) (*task.Task, error)
	RetryTaskFunc  func(ctx context.Context, id, reason string) (*task.Task, error)
	CountTasksFunc func(ctx context.Context) ([]task.Count, error)
}

var _ task.Store = (*fakeStore)(nil)

func (s *fakeStore) GetTask(ctx context.Context, id string) (*task.Task, error) {
	return s.GetTaskFunc(ctx, id)
}

func (s *fakeStore) ListTasks(ctx context.Context, f task.Filter) (*task.Page, error) {
	return s.ListTasksFunc(ctx, f)
}

func (s *fakeStore) StopTask(ctx context.Context, id string) (*task.Task, error) {
	return s.StopTaskFunc(ctx, id)
}

func (s *fakeStore) RetryTask(ctx context.Context, id, reason string) (*task.Task, error) {
	return s.RetryTaskFunc(ctx, id, reason)
}

func (s *fakeStore) CountTasks(ctx context.Context) ([]task.Count, error) {
	return s.CountTasksFunc(ctx)
}

func TestCounts(t *testing.T) {
	t.Parallel()
	s := &fakeStore{CountTasksFunc: func(context.Context) ([]task.Count, error) {
		return []task.Count{
			{Target: "b", Status: task.Failed, N: 1},
			{Target: "a", Status: task.Succeeded, N: 2},
			{Target: "b", Status: task.Enqueued, N: 3},
			{Target: "a", Status: task.Running, N: 4},
		}, nil
	}}
	got, err := task.Counts(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	want := []task.Count{ // by target, then in lifecycle order
		{Target: "a", Status: task.Running, N: 4},
		{Target: "a", Status: task.Succeeded, N: 2},
		{Target: "b", Status: task.Enqueued, N: 3},
		{Target: "b", Status: task.Failed, N: 1},
	}
	if !slices.Equal(got, want) {
		t.Errorf("Counts = %v, want %v", got, want)
	}
	boom := errors.New("boom")
	s.CountTasksFunc = func(context.Context) ([]task.Count, error) { return nil, boom }
	if _, err := task.Counts(context.Background(), s); !errors.Is(err, boom) {
		t.Errorf("Counts = %v, want the store's error", err)
	}
}

func TestListFilter(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)
	tests := []struct {
		name string
		in   task.Filter
		want *task.Filter // nil: rejected with ErrInvalidFilter, store not called
	}{
		{"zero", task.Filter{}, &task.Filter{Order: task.NewestFirst, Limit: task.DefaultLimit}},
		{"kept", task.Filter{
			Statuses: []task.Status{task.Failed, task.Expired}, Target: "t", IDPrefix: "abc",
			Since: t0, Until: t0.Add(time.Hour), Order: task.OldestFirst, Limit: 7, Cursor: "c",
		}, &task.Filter{
			Statuses: []task.Status{task.Failed, task.Expired}, Target: "t", IDPrefix: "abc",
			Since: t0, Until: t0.Add(time.Hour), Order: task.OldestFirst, Limit: 7, Cursor: "c",
		}},
		{"limit 1", task.Filter{Limit: 1}, &task.Filter{Order: task.NewestFirst, Limit: 1}},
		{"limit max", task.Filter{Limit: task.MaxLimit}, &task.Filter{Order: task.NewestFirst, Limit: task.MaxLimit}},
		{"since only", task.Filter{Since: t0}, &task.Filter{Since: t0, Order: task.NewestFirst, Limit: task.DefaultLimit}},
		{"until only", task.Filter{Until: t0}, &task.Filter{Until: t0, Order: task.NewestFirst, Limit: task.DefaultLimit}},
		{"id prefix of the longest ID", task.Filter{IDPrefix: strings.Repeat("a", task.MaxIDLen)},
			&task.Filter{IDPrefix: strings.Repeat("a", task.MaxIDLen), Order: task.NewestFirst, Limit: task.DefaultLimit}},
		{"limit over max", task.Filter{Limit: task.MaxLimit + 1}, nil},
		{"negative limit", task.Filter{Limit: -1}, nil},
		{"unknown order", task.Filter{Order: "sideways"}, nil},
		{"order in other case", task.Filter{Order: "DESC"}, nil},
		{"unknown status", task.Filter{Statuses: []task.Status{task.Running, "Done"}}, nil},
		{"status in other case", task.Filter{Statuses: []task.Status{"running"}}, nil},
		{"since equals until", task.Filter{Since: t0, Until: t0}, nil},
		{"since after until", task.Filter{Since: t0.Add(time.Second), Until: t0}, nil},
		{"id prefix too long", task.Filter{IDPrefix: strings.Repeat("a", task.MaxIDLen+1)}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got *task.Filter
			page := &task.Page{Tasks: []*task.Task{{ID: "x"}}, Next: "n"}
			s := &fakeStore{ListTasksFunc: func(_ context.Context, f task.Filter) (*task.Page, error) {
				got = &f
				return page, nil
			}}
			res, err := task.List(context.Background(), s, tt.in)
			if tt.want == nil {
				if !errors.Is(err, task.ErrInvalidFilter) || got != nil {
					t.Fatalf("List(%+v) = %v (store called: %v), want ErrInvalidFilter", tt.in, err, got != nil)
				}
				return
			}
			if err != nil || res != page {
				t.Fatalf("List(%+v) = %v, %v", tt.in, res, err)
			}
			if fmt.Sprint(*got) != fmt.Sprint(*tt.want) {
				t.Errorf("store got %+v, want %+v", *got, *tt.want)
			}
		})
	}
}

func TestHelpersCheckIDs(t *testing.T) {
	t.Parallel()
	errStore := errors.New("store called")
	var reasons []string
	s := &fakeStore{
		GetTaskFunc:  func(context.Context, string) (*task.Task, error) { return nil, errStore },
		StopTaskFunc: func(context.Context, string) (*task.Task, error) { return nil, errStore },
		RetryTaskFunc: func(_ context.Context, _, reason string) (*task.Task, error) {
			reasons = append(reasons, reason)
			return nil, errStore
		},
	}
	ctx := context.Background()
	for _, id := range []string{"", "../x", "1abc", "a b"} {
		if _, err := task.Query(ctx, s, id); !errors.Is(err, task.ErrInvalidID) {
			t.Errorf("Query(%q) = %v", id, err)
		}
		if _, err := task.Stop(ctx, s, id); !errors.Is(err, task.ErrInvalidID) {
			t.Errorf("Stop(%q) = %v", id, err)
		}
		if _, err := task.Retry(ctx, s, id, ""); !errors.Is(err, task.ErrInvalidID) {
			t.Errorf("Retry(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"ok_id", task.NewID(time.Now())} {
		if _, err := task.Query(ctx, s, id); !errors.Is(err, errStore) {
			t.Errorf("Query(%q) = %v, want the store's answer", id, err)
		}
		if _, err := task.Stop(ctx, s, id); !errors.Is(err, errStore) {
			t.Errorf("Stop(%q) = %v, want the store's answer", id, err)
		}
	}
	_, _ = task.Retry(ctx, s, "ok_id", "")
	_, _ = task.Retry(ctx, s, "ok_id", "bad deploy fixed")
	if !slices.Equal(reasons, []string{"retried on request", "bad deploy fixed"}) {
		t.Errorf("reasons = %q", reasons)
	}
}

func TestContext(t *testing.T) {
	t.Parallel()
	if _, ok := task.FromContext(context.Background()); ok {
		t.Error("FromContext of a plain context reports an attempt")
	}
	a := task.Attempt{ID: "x", Target: "t", Number: 2, CreatedAt: time.Unix(1, 0)}
	got, ok := task.FromContext(task.NewContext(context.Background(), a))
	if !ok || got != a {
		t.Errorf("FromContext = %+v, %v; want %+v", got, ok, a)
	}
}

// openExampleQueue opens a queue in a new temporary directory, with a
// clock that steps a second each time it is read, so that tasks enqueued
// one after the other never share the millisecond that orders listings.
// The returned func closes the queue and removes the directory.
func openExampleQueue() (*queue.Queue, func()) {
	dir, err := os.MkdirTemp("", "offload-example")
	if err != nil {
		log.Fatal(err)
	}
	var ticks atomic.Int64
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	now := func() time.Time { return start.Add(time.Duration(ticks.Add(1)-1) * time.Second) }
	db, err := queue.Open(filepath.Join(dir, "offload.db"), &queue.Options{Now: now})
	if err != nil {
		log.Fatal(err)
	}
	return db, func() {
		db.Close()
		os.RemoveAll(dir)
	}
}

func exampleRequest(path string) *reqcodec.Request {
	return &reqcodec.Request{Method: http.MethodPost, RequestURI: path, Host: "example.com"}
}

func ExampleQuery() {
	db, cleanup := openExampleQueue()
	defer cleanup()
	ctx := context.Background()

	// What the trigger middleware does for an async request.
	r, err := db.Enqueue(ctx, &queue.Job{ID: "report_2030_q1", Target: "reports", Request: exampleRequest("/reports/2030-q1")})
	if err != nil {
		log.Fatal(err)
	}

	t, err := task.Query(ctx, db, r.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(t.ID, t.Target, t.Status, t.Attempts, t.Request.Method, t.Request.URL)

	_, err = task.Query(ctx, db, "no_such_task")
	fmt.Println(errors.Is(err, task.ErrNotFound))
	// Output:
	// report_2030_q1 reports Enqueued 0 POST /reports/2030-q1
	// true
}

func ExampleList() {
	db, cleanup := openExampleQueue()
	defer cleanup()
	ctx := context.Background()

	for _, name := range []string{"a", "b", "c", "d", "e"} {
		job := &queue.Job{ID: "resize_" + name, Target: "images", Request: exampleRequest("/images/" + name)}
		if _, err := db.Enqueue(ctx, job); err != nil {
			log.Fatal(err)
		}
	}
	if _, err := task.Stop(ctx, db, "resize_c"); err != nil {
		log.Fatal(err)
	}

	// Page through the queued tasks, two at a time, oldest first.
	f := task.Filter{Statuses: []task.Status{task.Enqueued}, Target: "images", Order: task.OldestFirst, Limit: 2}
	for {
		page, err := task.List(ctx, db, f)
		if err != nil {
			log.Fatal(err)
		}
		for _, t := range page.Tasks {
			fmt.Println(t.ID, t.Status)
		}
		if page.Next == "" {
			break
		}
		f.Cursor = page.Next
	}
	// Output:
	// resize_a Enqueued
	// resize_b Enqueued
	// resize_d Enqueued
	// resize_e Enqueued
}

// secret hides itself from logs, as slog.LogValuer lets a type do.
type secret string

func (secret) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// The task's copy of a record is written as slog's text handler writes
// it: values resolved (a secret that redacts itself stays redacted),
// empty attributes and groups left out, group values flattened.
func TestLoggerWritesAttrsAsSlogDoes(t *testing.T) {
	t.Parallel()
	rep := &logReporter{}
	ctx := task.NewContext(context.Background(), task.Attempt{ID: "01ABC", Target: "t", Number: 1})
	ctx = task.WithReporter(ctx, rep, slog.New(slog.DiscardHandler))
	task.Logger(ctx).With(slog.Attr{}, slog.Group("empty")).Info("m",
		"token", secret("hunter2"),
		slog.Group("req", "method", "GET"),
		slog.Group("", "a", 1))
	want := "m token=REDACTED req.method=GET a=1"
	if len(rep.logs) != 1 || rep.logs[0].Message != want {
		t.Errorf("task's records %+v; want %q", rep.logs, want)
	}
}

// logReporter keeps what a Logger reports.
type logReporter struct{ logs []task.LogRecord }

func (r *logReporter) Log(l task.LogRecord)        { r.logs = append(r.logs, l) }
func (r *logReporter) SetProgress(float64, string) {}

// The task's copy of a record holds what the handler logged, its own
// attributes included whatever their names (a "target" that is an output
// file); the application's log gets them too, under the task's
// identifiers.
func TestLoggerKeepsTheHandlersAttrs(t *testing.T) {
	t.Parallel()
	var app strings.Builder
	base := slog.New(slog.NewTextHandler(&app, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	rep := &logReporter{}
	ctx := task.NewContext(context.Background(), task.Attempt{ID: "01ABC", Target: "transcode", Number: 2})
	ctx = task.WithReporter(ctx, rep, base)
	task.Logger(ctx).With("target", "s3://out/a.mp4").WithGroup("frame").Info("saved", "attempt", "second pass")

	want := "saved target=s3://out/a.mp4 frame.attempt=second pass"
	if len(rep.logs) != 1 || rep.logs[0].Message != want || rep.logs[0].Attempt != 2 {
		t.Errorf("task's records %+v; want one of attempt 2: %q", rep.logs, want)
	}
	wantApp := `level=INFO msg=saved task=01ABC target=transcode attempt=2 target=s3://out/a.mp4 frame.attempt="second pass"` + "\n"
	if app.String() != wantApp {
		t.Errorf("application log:\n got %q\nwant %q", app.String(), wantApp)
	}
}

// A level of the application's own below Debug (a trace) that its handler
// enables reaches that handler during a replay as in a sync call; the
// task keeps Debug and above only, whatever the handler's level.
func TestLoggerLevels(t *testing.T) {
	t.Parallel()
	const levelTrace = slog.Level(-8)
	var app strings.Builder
	base := slog.New(slog.NewTextHandler(&app, &slog.HandlerOptions{Level: levelTrace}))
	rep := &logReporter{}
	ctx := task.NewContext(context.Background(), task.Attempt{ID: "01ABC", Target: "t", Number: 1})
	ctx = task.WithReporter(ctx, rep, base)
	task.Logger(ctx).Log(ctx, levelTrace, "trace detail")
	task.Logger(ctx).Debug("debug detail")
	if !strings.Contains(app.String(), "trace detail") || !strings.Contains(app.String(), "debug detail") {
		t.Errorf("application log %q; want both records", app.String())
	}
	if len(rep.logs) != 1 || rep.logs[0].Message != "debug detail" {
		t.Errorf("task's records %+v; want the Debug one only", rep.logs)
	}
}

// A record longer than MaxLogMessage is kept cut at a rune boundary: the
// task's copy stays valid UTF-8.
func TestLoggerCutsAtARune(t *testing.T) {
	t.Parallel()
	rep := &logReporter{}
	ctx := task.WithReporter(context.Background(), rep, slog.New(slog.DiscardHandler))
	task.Logger(ctx).Info(strings.Repeat("a", task.MaxLogMessage-1) + "é and more")
	if len(rep.logs) != 1 || !utf8.ValidString(rep.logs[0].Message) || len(rep.logs[0].Message) != task.MaxLogMessage-1 {
		t.Errorf("kept message of %d bytes, valid UTF-8 %v; want the %d bytes before the é",
			len(rep.logs[0].Message), utf8.ValidString(rep.logs[0].Message), task.MaxLogMessage-1)
	}
}

// A handler reports how far it got and logs what it did: both are kept
// with the task (Query shows them while it runs and after), and the logs
// also go to the application's logger.
func ExampleSetProgress() {
	dir, err := os.MkdirTemp("", "offload-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.DiscardHandler)
	db, err := queue.Open(filepath.Join(dir, "offload.db"), &queue.Options{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	finished := make(chan struct{})
	sched, err := invoke.New(db, &invoke.Options{Logger: quiet, Observer: func(e invoke.Event) {
		if e.Kind == invoke.EventFinished {
			close(finished)
		}
	}})
	if err != nil {
		log.Fatal(err)
	}

	report := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		regions := []string{"north", "south"}
		for i, region := range regions {
			// ... the slow work for one region ...
			task.Logger(ctx).Info("summed", "region", region)
			task.SetProgress(ctx, float64(i+1)/float64(len(regions))*100, "summed "+region)
		}
		fmt.Fprintln(w, "report ready")
	})
	if err := sched.Register("reports", report, nil); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error)
	go func() { stopped <- sched.Run(ctx) }()

	id, err := sched.Submit(ctx, "reports", httptest.NewRequest(http.MethodPost, "/reports/2030-q1", nil))
	if err != nil {
		log.Fatal(err)
	}
	<-finished
	cancel()
	if err := <-stopped; err != nil {
		log.Fatal(err)
	}

	t, err := task.Query(context.Background(), db, id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(t.Status, t.Progress.Percent, t.Progress.Message)
	for _, l := range t.Logs {
		fmt.Println(l.Level, l.Message)
	}
	// Output:
	// Succeeded 100 summed south
	// INFO summed region=north
	// INFO summed region=south
}
