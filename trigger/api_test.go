package trigger_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

// apiTask is the part of the API's task view these tests read.
type apiTask struct {
	ID                    string       `json:"id"`
	Target                string       `json:"target"`
	Status                task.Status  `json:"status"`
	CreatedTime           time.Time    `json:"createdTime"`
	EndTime               *time.Time   `json:"endTime"`
	NextAttemptTime       *time.Time   `json:"nextAttemptTime"`
	InvocationCount       int          `json:"invocationCount"`
	AlreadyRetriedTimes   int          `json:"alreadyRetriedTimes"`
	LastError             string       `json:"lastError"`
	Events                []task.Event `json:"events"`
	ReturnPayload         string       `json:"returnPayload"`
	ReturnPayloadEncoding string       `json:"returnPayloadEncoding"`
	Request               struct {
		Method          string              `json:"method"`
		URL             string              `json:"url"`
		Headers         map[string][]string `json:"headers"`
		BodySize        int64               `json:"bodySize"`
		Payload         *string             `json:"requestPayload"`
		PayloadEncoding string              `json:"requestPayloadEncoding"`
		PayloadOmitted  bool                `json:"requestPayloadOmitted"`
	} `json:"request"`
	Response *struct {
		StatusCode int `json:"statusCode"`
	} `json:"response"`
}

type apiList struct {
	Tasks      []apiTask `json:"tasks"`
	NextCursor string    `json:"nextCursor"`
}

func decode[T any](t *testing.T, res *result) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(res.body, &v); err != nil {
		t.Fatalf("decoding %s: %v", res.body, err)
	}
	return v
}

func (b *testBundle) postAPI(t *testing.T, path string) *result {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.srv.URL+taskPath+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b.do(t, req)
}

// population is a service with tasks in several statuses and two targets,
// quiet (its scheduler stopped) so that listings are stable.
type population struct {
	*testBundle
	all []*task.Task // every task, from the Go API
}

func newPopulation(t *testing.T) *population {
	t.Helper()
	other := make(chan struct{}, 10)
	b := setup(t, setupOpts{
		run: true,
		answer: func(r *http.Request) int {
			if r.PathValue("name") == "bad" {
				return http.StatusBadRequest // fails at once
			}
			return http.StatusOK
		},
		other: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { other <- struct{}{} }),
	})
	later := []string{trigger.HeaderInvocationType, "Async", trigger.HeaderAsyncDelay, "3600"}
	for _, name := range []string{"ok", "bad", "ok", "bad", "ok"} {
		if res := b.post(t, workPath+name, "body of "+name, trigger.HeaderInvocationType, "Async"); res.status != http.StatusAccepted {
			t.Fatalf("status %d", res.status)
		}
	}
	for _, id := range []string{"job_a", "job_b", "other_c"} {
		if res := b.post(t, workPath+"later", id, append(later, trigger.HeaderAsyncTaskID, id)...); res.status != http.StatusAccepted {
			t.Fatalf("status %d", res.status)
		}
	}
	if res := b.post(t, "/other/x", "", trigger.HeaderInvocationType, "Async"); res.status != http.StatusAccepted {
		t.Fatalf("status %d", res.status)
	}
	if res := b.post(t, "/other/y", "", later...); res.status != http.StatusAccepted {
		t.Fatalf("status %d", res.status)
	}
	for range 5 {
		b.nextCall(t)
	}
	select {
	case <-other:
	case <-time.After(30 * time.Second):
		t.Fatal("the other target did not run within 30s")
	}
	b.stopScheduler(t) // waits until every attempt is recorded
	if res := b.postAPI(t, "job_b/stop"); res.status != http.StatusOK {
		t.Fatalf("stop: %d %s", res.status, res.body)
	}
	return &population{testBundle: b, all: b.stored(t)}
}

func (p *population) ids(keep func(*task.Task) bool) []string {
	var ids []string
	for _, tk := range p.all {
		if keep(tk) {
			ids = append(ids, tk.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// TestAPIList checks every listing parameter, and their combinations,
// against a brute-force filter of the whole population.
func TestAPIList(t *testing.T) {
	t.Parallel()
	p := newPopulation(t)
	if len(p.all) != 10 {
		t.Fatalf("population of %d tasks, want 10", len(p.all))
	}
	byStatus := map[task.Status]int{}
	for _, tk := range p.all {
		byStatus[tk.Status]++
	}
	if want := map[task.Status]int{task.Succeeded: 4, task.Failed: 2, task.Enqueued: 3, task.Stopped: 1}; !mapsEqual(byStatus, want) {
		t.Fatalf("population statuses %v, want %v", byStatus, want)
	}
	generated := ""
	for _, tk := range p.all {
		if task.IsGenerated(tk.ID) {
			generated = tk.ID
		}
	}
	// Boundaries on whole milliseconds: the index is ordered by ID time,
	// whose unit is the millisecond.
	mid := p.all[len(p.all)/2].CreatedAt.Truncate(time.Millisecond)
	since, until := mid.Format(time.RFC3339Nano), mid.Add(time.Millisecond).Format(time.RFC3339Nano)
	is := func(ss ...task.Status) func(*task.Task) bool {
		return func(tk *task.Task) bool { return slices.Contains(ss, tk.Status) }
	}
	and := func(fs ...func(*task.Task) bool) func(*task.Task) bool {
		return func(tk *task.Task) bool {
			for _, f := range fs {
				if !f(tk) {
					return false
				}
			}
			return true
		}
	}
	of := func(target string) func(*task.Task) bool {
		return func(tk *task.Task) bool { return tk.Target == target }
	}
	prefixed := func(s string) func(*task.Task) bool {
		return func(tk *task.Task) bool { return strings.HasPrefix(tk.ID, s) }
	}
	createdFrom := func(t time.Time) func(*task.Task) bool {
		return func(tk *task.Task) bool { return !tk.CreatedAt.Before(t) }
	}
	createdBefore := func(t time.Time) func(*task.Task) bool {
		return func(tk *task.Task) bool { return tk.CreatedAt.Before(t) }
	}
	all := func(*task.Task) bool { return true }

	tests := []struct {
		name  string
		query url.Values
		want  func(*task.Task) bool
	}{
		{"everything", nil, all},
		{"status", url.Values{"status": {"Succeeded"}}, is(task.Succeeded)},
		{"status in any case", url.Values{"status": {"fAILED"}}, is(task.Failed)},
		{"status list", url.Values{"status": {"Enqueued, Stopped"}}, is(task.Enqueued, task.Stopped)},
		{"status repeated", url.Values{"status": {"Enqueued", "Failed"}}, is(task.Enqueued, task.Failed)},
		{"status nothing has", url.Values{"status": {"Running"}}, is(task.Running)},
		{"target", url.Values{"target": {"other"}}, of("other")},
		{"unknown target", url.Values{"target": {"nope"}}, of("nope")},
		{"target and status", url.Values{"target": {"work"}, "status": {"Enqueued"}}, and(of("work"), is(task.Enqueued))},
		{"caller ID prefix", url.Values{"prefix": {"job_"}}, prefixed("job_")},
		{"caller ID prefix and status", url.Values{"prefix": {"job_"}, "status": {"Stopped"}}, and(prefixed("job_"), is(task.Stopped))},
		{"whole caller ID", url.Values{"prefix": {"other_c"}}, prefixed("other_c")},
		{"generated ID prefix", url.Values{"prefix": {generated[:8]}}, prefixed(generated[:8])},
		{"whole generated ID", url.Values{"prefix": {generated}}, prefixed(generated)},
		{"prefix nothing has", url.Values{"prefix": {"zzz"}}, prefixed("zzz")},
		{"since", url.Values{"since": {since}}, createdFrom(mid)},
		{"until", url.Values{"until": {until}}, createdBefore(mid.Add(time.Millisecond))},
		{"since and until", url.Values{"since": {since}, "until": {until}}, and(createdFrom(mid), createdBefore(mid.Add(time.Millisecond)))},
		{"since with status and target", url.Values{"since": {since}, "status": {"Succeeded"}, "target": {"work"}},
			and(createdFrom(mid), is(task.Succeeded), of("work"))},
		{"oldest first", url.Values{"order": {"asc"}}, all},
		{"newest first", url.Values{"order": {"desc"}}, all},
		{"largest limit", url.Values{"limit": {"100"}}, all},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := p.get(t, taskPath+"?"+tt.query.Encode())
			if res.status != http.StatusOK {
				t.Fatalf("status %d %s", res.status, res.body)
			}
			page := decode[apiList](t, res)
			var got []string
			for _, tk := range page.Tasks {
				got = append(got, tk.ID)
			}
			slices.Sort(got)
			if want := p.ids(tt.want); !slices.Equal(got, want) {
				t.Errorf("listed %q, want %q", got, want)
			}
			if page.NextCursor != "" {
				t.Errorf("nextCursor %q on the only page", page.NextCursor)
			}
		})
	}

	t.Run("order", func(t *testing.T) {
		t.Parallel()
		asc := decode[apiList](t, p.get(t, taskPath+"?order=asc"))
		desc := decode[apiList](t, p.get(t, taskPath))
		if len(asc.Tasks) != len(p.all) || len(desc.Tasks) != len(p.all) {
			t.Fatalf("%d and %d tasks", len(asc.Tasks), len(desc.Tasks))
		}
		for i := range asc.Tasks {
			if a, d := asc.Tasks[i], desc.Tasks[len(desc.Tasks)-1-i]; a.ID != d.ID {
				t.Errorf("position %d: %s oldest first, %s newest first", i, a.ID, d.ID)
			}
			if i > 0 && asc.Tasks[i].CreatedTime.Before(asc.Tasks[i-1].CreatedTime.Truncate(time.Millisecond)) {
				t.Errorf("oldest first: %s before %s", asc.Tasks[i-1].ID, asc.Tasks[i].ID)
			}
		}
	})

	for _, q := range []string{"limit=3", "limit=1&order=asc", "limit=2&status=Succeeded,Enqueued", "limit=1&prefix=job_", "limit=1&target=other"} {
		t.Run("paging "+q, func(t *testing.T) {
			t.Parallel()
			query, _ := url.ParseQuery(q)
			var got []string
			for pages := 0; ; pages++ {
				if pages > len(p.all) {
					t.Fatal("paging does not end")
				}
				page := decode[apiList](t, p.get(t, taskPath+"?"+query.Encode()))
				for _, tk := range page.Tasks {
					got = append(got, tk.ID)
				}
				if page.NextCursor == "" {
					break
				}
				query.Set("cursor", page.NextCursor)
			}
			whole, _ := url.ParseQuery(q)
			whole.Set("limit", "100")
			want := decode[apiList](t, p.get(t, taskPath+"?"+whole.Encode()))
			var wantIDs []string
			for _, tk := range want.Tasks {
				wantIDs = append(wantIDs, tk.ID)
			}
			if !slices.Equal(got, wantIDs) {
				t.Errorf("paged %q, want %q in one page", got, wantIDs)
			}
		})
	}

	bad := []struct {
		name, query string
	}{
		{"unknown status", "status=Done"},
		{"one bad status in a list", "status=Enqueued,Nope"},
		{"empty status in a list", "status=Enqueued,"},
		{"order", "order=up"},
		{"order in upper case", "order=ASC"},
		{"limit zero", "limit=0"},
		{"limit negative", "limit=-1"},
		{"limit too large", "limit=101"},
		{"limit not a number", "limit=ten"},
		{"since not a time", "since=yesterday"},
		{"since without zone", "since=2026-01-02T15:04:05"},
		{"until out of range", "until=2026-13-01T00:00:00Z"},
		{"since not before until", "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z"},
		{"since equal to until", "since=2026-01-02T00:00:00Z&until=2026-01-02T00:00:00Z"},
		{"cursor not base64", "cursor=!!!"},
		{"cursor truncated", "cursor=aw"},
		{"cursor of another listing", "prefix=job_&cursor=" + firstCursor(t, p, "limit=1")},
		{"prefix too long", "prefix=" + strings.Repeat("a", 129)},
	}
	for _, tt := range bad {
		t.Run("bad "+tt.name, func(t *testing.T) {
			t.Parallel()
			res := p.get(t, taskPath+"?"+tt.query)
			if res.status != http.StatusBadRequest || res.code() != trigger.CodeInvalidArgument {
				t.Errorf("status %d %s, want 400 %s", res.status, res.body, trigger.CodeInvalidArgument)
			}
			if msg := decode[struct{ Message string }](t, res).Message; msg == "" || strings.ContainsAny(msg, "\n") {
				t.Errorf("message %q: want one line", msg)
			}
		})
	}
}

func firstCursor(t *testing.T, p *population, query string) string {
	t.Helper()
	page := decode[apiList](t, p.get(t, taskPath+"?"+query))
	if page.NextCursor == "" {
		t.Fatal("no cursor")
	}
	return url.QueryEscape(page.NextCursor)
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestAPIGet covers GET {base}/{id}: the view of each status, 404 and 400.
func TestAPIGet(t *testing.T) {
	t.Parallel()
	p := newPopulation(t)
	var succeeded, failed *task.Task
	for _, tk := range p.all {
		switch tk.Status {
		case task.Succeeded:
			if tk.Target == target {
				succeeded = tk
			}
		case task.Failed:
			failed = tk
		}
	}

	t.Run("succeeded", func(t *testing.T) {
		t.Parallel()
		v := decode[apiTask](t, p.get(t, taskPath+succeeded.ID))
		if v.ID != succeeded.ID || v.Target != target || v.Status != task.Succeeded || v.InvocationCount != 1 || v.AlreadyRetriedTimes != 0 {
			t.Errorf("view %+v", v)
		}
		if v.Response == nil || v.Response.StatusCode != http.StatusOK || v.ReturnPayload != "handled POST ok: body of ok" || v.EndTime == nil {
			t.Errorf("result %+v, payload %q", v.Response, v.ReturnPayload)
		}
		if v.Request.Method != http.MethodPost || v.Request.URL != workPath+"ok" || v.Request.BodySize != int64(len("body of ok")) {
			t.Errorf("request %+v", v.Request)
		}
		if v.Request.Payload != nil {
			t.Errorf("request payload %q shown without includePayload", *v.Request.Payload)
		}
		if got := statuses(v.Events); !slices.Equal(got, []task.Status{task.Enqueued, task.Running, task.Succeeded}) {
			t.Errorf("events %v", got)
		}
	})
	t.Run("failed", func(t *testing.T) {
		t.Parallel()
		v := decode[apiTask](t, p.get(t, taskPath+failed.ID))
		if v.Status != task.Failed || v.LastError == "" || v.Response == nil || v.Response.StatusCode != http.StatusBadRequest {
			t.Errorf("view %+v", v)
		}
	})
	t.Run("delayed", func(t *testing.T) {
		t.Parallel()
		v := decode[apiTask](t, p.get(t, taskPath+"job_a"))
		if v.Status != task.Enqueued || v.NextAttemptTime == nil || v.NextAttemptTime.Sub(v.CreatedTime) < 3599*time.Second || v.InvocationCount != 0 {
			t.Errorf("view %+v", v)
		}
	})
	t.Run("includePayload", func(t *testing.T) {
		t.Parallel()
		v := decode[apiTask](t, p.get(t, taskPath+succeeded.ID+"?includePayload=true"))
		if v.Request.Payload == nil || *v.Request.Payload != "body of ok" || v.Request.PayloadEncoding != "" {
			t.Errorf("request payload %v (%q)", v.Request.Payload, v.Request.PayloadEncoding)
		}
		v = decode[apiTask](t, p.get(t, taskPath+succeeded.ID+"?includePayload=false"))
		if v.Request.Payload != nil {
			t.Errorf("request payload shown with includePayload=false")
		}
		if res := p.get(t, taskPath+succeeded.ID+"?includePayload=yes"); res.status != http.StatusBadRequest || res.code() != trigger.CodeInvalidArgument {
			t.Errorf("includePayload=yes: %d %s, want 400 %s", res.status, res.body, trigger.CodeInvalidArgument)
		}
	})
	t.Run("payload in a blob file", func(t *testing.T) {
		t.Parallel()
		b := setup(t, setupOpts{trigger: &trigger.Options{TaskPath: taskPath, InlineBodyLimit: 1 << 10}})
		id := b.accept(t, strings.Repeat("x", 4<<10))
		v := decode[apiTask](t, b.get(t, taskPath+id+"?includePayload=true"))
		if !v.Request.PayloadOmitted || v.Request.Payload != nil || v.Request.BodySize != 4<<10 {
			t.Errorf("request %+v: want the 4 KiB body said to be omitted, not shown empty", v.Request)
		}
		if v = decode[apiTask](t, b.get(t, taskPath+id)); v.Request.PayloadOmitted {
			t.Errorf("requestPayloadOmitted without includePayload")
		}
	})
	t.Run("binary payload", func(t *testing.T) {
		t.Parallel()
		b := setup(t, setupOpts{})
		body := "\xff\x00\xfe binary"
		id := b.accept(t, body)
		v := decode[apiTask](t, b.get(t, taskPath+id+"?includePayload=true"))
		if v.Request.Payload == nil || v.Request.PayloadEncoding != "base64" {
			t.Fatalf("request payload %v (%q)", v.Request.Payload, v.Request.PayloadEncoding)
		}
		if got, err := base64.StdEncoding.DecodeString(*v.Request.Payload); err != nil || string(got) != body {
			t.Errorf("payload decodes to %q, %v", got, err)
		}
	})

	errs := []struct {
		name, path string
		status     int
		code       string
	}{
		{"unknown generated ID", "01ARZ3NDEKTSV4RRFFQ69G5FAV", http.StatusNotFound, trigger.CodeTaskNotFound},
		{"unknown caller ID", "nope", http.StatusNotFound, trigger.CodeTaskNotFound},
		{"ID with a dot", "a.b", http.StatusBadRequest, trigger.CodeInvalidTaskID},
		{"ID with an escaped slash", "a%2Fb", http.StatusBadRequest, trigger.CodeInvalidTaskID},
		{"escaped traversal", "%2E%2E%2Fx", http.StatusBadRequest, trigger.CodeInvalidTaskID},
		{"leading digit", "9lives", http.StatusBadRequest, trigger.CodeInvalidTaskID},
		{"too long", strings.Repeat("a", 129), http.StatusBadRequest, trigger.CodeInvalidTaskID},
		{"invalid UTF-8", "a%FF", http.StatusBadRequest, trigger.CodeInvalidTaskID},
		{"stop unknown", "nope/stop", http.StatusNotFound, trigger.CodeTaskNotFound},
		{"stop malformed", "a.b/stop", http.StatusBadRequest, trigger.CodeInvalidTaskID},
		{"retry unknown", "01ARZ3NDEKTSV4RRFFQ69G5FAV/retry", http.StatusNotFound, trigger.CodeTaskNotFound},
		{"retry malformed", "9x/retry", http.StatusBadRequest, trigger.CodeInvalidTaskID},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var res *result
			if strings.HasSuffix(tt.path, "/stop") || strings.HasSuffix(tt.path, "/retry") {
				res = p.postAPI(t, tt.path)
			} else {
				res = p.get(t, taskPath+tt.path)
			}
			if res.status != tt.status || res.code() != tt.code {
				t.Errorf("status %d %s, want %d %s", res.status, res.body, tt.status, tt.code)
			}
		})
	}
}

func statuses(events []task.Event) []task.Status {
	var out []task.Status
	for _, e := range events {
		out = append(out, e.Status)
	}
	return out
}

// TestAPIStopRetry covers POST {base}/{id}/stop and /retry in each status
// where they apply or are refused.
func TestAPIStopRetry(t *testing.T) {
	t.Parallel()
	p := newPopulation(t)
	find := func(s task.Status) string {
		for _, tk := range p.all {
			if tk.Status == s && task.IsGenerated(tk.ID) {
				return tk.ID
			}
		}
		t.Fatalf("no %s task", s)
		return ""
	}
	succeeded, failed := find(task.Succeeded), find(task.Failed)

	steps := []struct {
		name, path string
		status     int
		code       string
		want       task.Status // the task's status in the answer
	}{
		{"stop an enqueued task", "job_a/stop", http.StatusOK, "", task.Stopped},
		{"stop it again", "job_a/stop", http.StatusConflict, trigger.CodeTaskFinished, ""},
		{"retry the stopped task", "job_a/retry", http.StatusOK, "", task.Enqueued},
		{"retry it again", "job_a/retry", http.StatusConflict, trigger.CodeTaskNotRetryable, ""},
		{"stop it once more", "job_a/stop", http.StatusOK, "", task.Stopped},
		{"stop a succeeded task", succeeded + "/stop", http.StatusConflict, trigger.CodeTaskFinished, ""},
		{"retry a succeeded task", succeeded + "/retry", http.StatusConflict, trigger.CodeTaskNotRetryable, ""},
		{"retry a failed task", failed + "/retry", http.StatusOK, "", task.Enqueued},
		{"stop the retried task", failed + "/stop", http.StatusOK, "", task.Stopped},
	}
	// The steps build on each other: run them in order.
	for _, st := range steps {
		res := p.postAPI(t, st.path)
		if res.status != st.status || res.code() != st.code {
			t.Fatalf("%s: status %d %s, want %d %s", st.name, res.status, res.body, st.status, st.code)
		}
		// A refusal names the status and the rule, not the store's errors.
		if msg := decode[struct{ Message string }](t, res).Message; st.status == http.StatusConflict &&
			(!strings.HasPrefix(msg, "the task is ") || !strings.Contains(msg, " can be ") || strings.Contains(msg, "queue:")) {
			t.Errorf("%s: message %q", st.name, msg)
		}
		if st.want != "" {
			if v := decode[apiTask](t, res); v.Status != st.want {
				t.Fatalf("%s: answered status %s, want %s", st.name, v.Status, st.want)
			}
		}
	}
	v := decode[apiTask](t, p.get(t, taskPath+failed))
	if got := statuses(v.Events); !slices.Equal(got, []task.Status{task.Enqueued, task.Running, task.Failed, task.Enqueued, task.Stopped}) {
		t.Errorf("events of the failed task %v", got)
	}
	if !slices.ContainsFunc(v.Events, func(e task.Event) bool { return strings.Contains(e.Detail, "task API") }) {
		t.Errorf("no event says the retry came through the task API: %+v", v.Events)
	}
	if res := p.get(t, taskPath+"job_a/stop"); res.status != http.StatusMethodNotAllowed {
		t.Errorf("GET of stop: %d", res.status)
	}
}

// TestAPIHidesSecrets: request headers that carry secrets never appear in
// any output of the task API, though the replayed handler gets them.
func TestAPIHidesSecrets(t *testing.T) {
	t.Parallel()
	secrets := map[string]string{
		"Authorization":       "Bearer s3cret-bearer",
		"Cookie":              "session=s3cret-cookie",
		"Proxy-Authorization": "Basic s3cret-proxy",
		"x-api-key":           "s3cret-api-key", // redacted through APIOptions, named in lower case
		"X-Tenant-Token":      "s3cret-tenant",
	}
	b := setup(t, setupOpts{run: true, api: &trigger.APIOptions{RedactHeaders: []string{"x-api-key", "X-TENANT-TOKEN"}}})
	header := []string{trigger.HeaderInvocationType, "Async", "X-Visible", "shown"}
	for k, v := range secrets {
		header = append(header, k, v)
	}
	ran := b.accept(t, "ran", append(header, trigger.HeaderAsyncTaskID, "ran")...)
	waiting := b.accept(t, "waiting", append(header, trigger.HeaderAsyncTaskID, "waiting", trigger.HeaderAsyncDelay, "3600")...)
	c := b.nextCall(t)
	b.stopScheduler(t)
	for k, v := range secrets {
		if got := c.Header.Get(k); got != v {
			t.Errorf("the replayed handler got %s = %q, want %q", k, got, v)
		}
	}

	outputs := map[string]*result{
		"get ran":             b.get(t, taskPath+ran),
		"get with payload":    b.get(t, taskPath+ran+"?includePayload=true"),
		"get waiting":         b.get(t, taskPath+waiting),
		"list":                b.get(t, taskPath),
		"list with a status":  b.get(t, taskPath+"?status=Succeeded"),
		"list with a prefix":  b.get(t, taskPath+"?prefix=wa&includePayload=true"),
		"stop":                b.postAPI(t, waiting+"/stop"),
		"retry":               b.postAPI(t, waiting+"/retry"),
		"get after the retry": b.get(t, taskPath+waiting),
	}
	for name, res := range outputs {
		if res.status != http.StatusOK {
			t.Errorf("%s: status %d %s", name, res.status, res.body)
			continue
		}
		if bytes.Contains(res.body, []byte("s3cret")) {
			t.Errorf("%s shows a secret: %s", name, res.body)
		}
		if !bytes.Contains(res.body, []byte(`"X-Visible":["shown"]`)) {
			t.Errorf("%s hides a header that is not secret: %s", name, res.body)
		}
		// At least the request's secrets; a stored response's headers are redacted too.
		if n := bytes.Count(res.body, []byte("[redacted]")); n < len(secrets) {
			t.Errorf("%s: %d redacted values, want at least %d", name, n, len(secrets))
		}
	}
}

// TestAPIUnrouted: a path or method the task API does not serve gets the
// mux's status (404, or 405 with Allow) with a JSON body and a stable code,
// like every other answer of the API.
func TestAPIUnrouted(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	for _, c := range []struct {
		method, path string
		status       int
		code, allow  string
	}{
		{http.MethodGet, "a/b/c", http.StatusNotFound, trigger.CodeNotFound, ""},
		{http.MethodPost, "a/launch", http.StatusNotFound, trigger.CodeNotFound, ""},
		{http.MethodGet, "a/stop", http.StatusMethodNotAllowed, trigger.CodeMethodNotAllowed, "POST"},
		{http.MethodDelete, "a", http.StatusMethodNotAllowed, trigger.CodeMethodNotAllowed, "GET, HEAD"},
	} {
		req, err := http.NewRequest(c.method, b.srv.URL+taskPath+c.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		res := b.do(t, req)
		if res.status != c.status || res.code() != c.code || res.header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: %d %q %s %s, want %d %q in JSON", c.method, c.path, res.status, res.code(),
				res.header.Get("Content-Type"), res.body, c.status, c.code)
		}
		if got := res.header.Get("Allow"); got != c.allow {
			t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, got, c.allow)
		}
	}
}

// Mounted at "/tasks" with the prefix stripped, as chi's Mount does,
// GET /tasks?... is the list itself, and a path ServeMux would clean is
// not found rather than redirected out of the API (to the site's root).
func TestAPIMountedWithoutSlash(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	id := b.accept(t, "x")
	r := chi.NewRouter()
	r.Mount("/tasks", http.StripPrefix("/tasks", trigger.TaskAPI(b.q, nil)))
	srv := newTestServer(t, r)
	noRedirect := *srv.Client()
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, c := range []struct {
		method, path string
		status       int
		code         string
	}{
		{http.MethodGet, "/tasks?status=Enqueued", http.StatusOK, ""},
		{http.MethodGet, "/tasks", http.StatusOK, ""},
		{http.MethodPost, "/tasks//" + id + "/stop", http.StatusNotFound, trigger.CodeNotFound},
		{http.MethodGet, "/tasks/./" + id, http.StatusNotFound, trigger.CodeNotFound},
	} {
		req, err := http.NewRequest(c.method, srv.URL+c.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != c.status || (c.code != "" && !strings.Contains(string(body), `"code":"`+c.code+`"`)) {
			t.Errorf("%s %s: %d %s (Location %q), want %d %s", c.method, c.path, res.StatusCode, body, res.Header.Get("Location"), c.status, c.code)
		}
		if c.status == http.StatusOK && !strings.Contains(string(body), id) {
			t.Errorf("%s %s: %s, want the list with %s", c.method, c.path, body, id)
		}
	}
	if st := b.query(t, id).Status; st != task.Enqueued {
		t.Errorf("task is %s after the requests; want Enqueued", st)
	}
}

// A browser's cross-origin POST (another site's form, with the operator's
// cookies) cannot stop or retry tasks, unless its origin is trusted; the
// same origin's, and a client that is not a browser, can.
func TestAPICrossOrigin(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{api: &trigger.APIOptions{TrustedOrigins: []string{"https://admin.example.com"}}})
	for _, c := range []struct {
		name   string
		header []string
		status int
	}{
		{"cross-site form", []string{"Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example", "Content-Type", "application/x-www-form-urlencoded"}, http.StatusForbidden},
		{"same-site other origin", []string{"Sec-Fetch-Site", "same-site", "Origin", "https://other.example.com"}, http.StatusForbidden},
		{"foreign Origin, older browser", []string{"Origin", "https://evil.example"}, http.StatusForbidden},
		{"same origin", []string{"Sec-Fetch-Site", "same-origin"}, http.StatusOK},
		{"trusted origin", []string{"Sec-Fetch-Site", "cross-site", "Origin", "https://admin.example.com"}, http.StatusOK},
		{"not a browser", nil, http.StatusOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := b.accept(t, "x")
			req, err := http.NewRequest(http.MethodPost, b.srv.URL+taskPath+id+"/stop", nil)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < len(c.header); i += 2 {
				req.Header.Set(c.header[i], c.header[i+1])
			}
			res := b.do(t, req)
			if res.status != c.status || (c.status == http.StatusForbidden && res.code() != trigger.CodeForbidden) {
				t.Errorf("stop: %d %s, want %d", res.status, res.body, c.status)
			}
			want := map[bool]task.Status{true: task.Stopped, false: task.Enqueued}[c.status == http.StatusOK]
			if st := b.query(t, id).Status; st != want {
				t.Errorf("task is %s, want %s", st, want)
			}
		})
	}
	defer func() {
		if recover() == nil {
			t.Error("TaskAPI took a malformed trusted origin")
		}
	}()
	trigger.TaskAPI(b.q, &trigger.APIOptions{TrustedOrigins: []string{"admin.example.com/path"}})
}

// nanStore shows every task with a progress JSON cannot carry.
type nanStore struct{ task.Store }

func (s nanStore) GetTask(ctx context.Context, id string) (*task.Task, error) {
	tk, err := s.Store.GetTask(ctx, id)
	if tk != nil {
		tk.Progress = &task.Progress{Percent: math.NaN()}
	}
	return tk, err
}

// An answer that JSON cannot carry is a 500 with a JSON error, never a
// 200 with no body.
func TestAPIAnswerThatCannotBeEncoded(t *testing.T) {
	t.Parallel()
	q := testutil.OpenQueue(t, &queue.Options{Logger: discard})
	r, err := q.Enqueue(context.Background(), &queue.Job{Target: "t", Request: &reqcodec.Request{Method: http.MethodPost, RequestURI: "/", Proto: "HTTP/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.StripPrefix("/tasks", trigger.TaskAPI(nanStore{q}, nil)))
	defer srv.Close()
	res, err := http.Get(srv.URL + "/tasks/" + r.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct{ Code string }
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil || res.StatusCode != http.StatusInternalServerError || body.Code != trigger.CodeInternal {
		t.Errorf("GET of a task JSON cannot carry: %d %+v (%v); want 500 %s", res.StatusCode, body, err, trigger.CodeInternal)
	}
}

// A retry of a task whose target the running scheduler does not have is
// a 409 that says so, and the task stays as it was.
func TestAPIRetryOfAnUnregisteredTarget(t *testing.T) {
	t.Parallel()
	q := testutil.OpenQueue(t, &queue.Options{Logger: discard})
	r, err := q.Enqueue(context.Background(), &queue.Job{Target: "gone", Request: &reqcodec.Request{Method: http.MethodPost, RequestURI: "/", Proto: "HTTP/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := q.Lease(context.Background(), time.Now(), []queue.LeaseRequest{{Target: "gone", Max: 1}})
	if err != nil || len(res.Leases) != 1 {
		t.Fatalf("Lease = %+v, %v", res, err)
	}
	if _, err := q.Finish(context.Background(), res.Leases[0], queue.Outcome{Status: task.Failed, Error: "e"}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Invalidate(context.Background(), []string{"kept"}); err != nil { // what a scheduler's Run does
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.StripPrefix("/tasks", trigger.TaskAPI(q, nil)))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/tasks/"+r.ID+"/retry", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Code, Message string }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusConflict ||
		body.Code != trigger.CodeTaskNotRetryable || !strings.Contains(body.Message, "no running scheduler has the task's target") {
		t.Errorf("retry: %d %+v (%v); want 409 %s saying why", resp.StatusCode, body, err, trigger.CodeTaskNotRetryable)
	}
	if tk, err := task.Query(context.Background(), q, r.ID); err != nil || tk.Status != task.Failed {
		t.Errorf("task after the refused retry: %v, %v; want Failed", tk, err)
	}
}
