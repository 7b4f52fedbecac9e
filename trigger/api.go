package trigger

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/offload-go/offload/task"
)

// defaultRedacted are request headers that the task API never shows.
var defaultRedacted = []string{"Authorization", "Cookie", "Proxy-Authorization", "Set-Cookie"}

// APIOptions configures TaskAPI. A nil *APIOptions means all defaults.
type APIOptions struct {
	// RedactHeaders names headers to hide in the API's output, on top of
	// Authorization, Cookie, Proxy-Authorization and (in stored responses)
	// Set-Cookie, which are always hidden.
	RedactHeaders []string
	// Authorize, if not nil, runs before every API call with the action
	// ("get", "list", "counts", "stop" or "retry") and the task ID (empty
	// for list and counts); an error answers 403 Forbidden with the
	// error's text, or 404 if it wraps task.ErrNotFound (so as not to tell
	// a caller that someone else's task exists). It does not replace the application's authentication,
	// which must sit in front of the API: it adds per-action rules.
	Authorize func(r *http.Request, action, id string) error
	// TrustedOrigins are origins ("https://admin.example.com") from which
	// a browser may stop and retry tasks, besides the API's own: a
	// browser's cross-origin POST is refused with 403, so that another
	// site cannot act with an operator's cookies. Over plain HTTP a
	// browser sends no Sec-Fetch-Site, and "the API's own" is the request's
	// Origin matching its Host: behind a reverse proxy that rewrites Host
	// (nginx's default), preserve it or list the public origin here.
	// TaskAPI panics on a malformed origin.
	TrustedOrigins []string
}

// TaskAPI returns the task HTTP API over s, to be mounted by the
// application behind its own authentication, for example:
//
//	mux.Handle("/tasks/", http.StripPrefix("/tasks", trigger.TaskAPI(db, nil)))
//
// Relative to where it is mounted it serves:
//
//	GET  /{id}          the task (add ?includePayload=true for the request body,
//	                    or requestPayloadOmitted if it is kept in a blob file)
//	GET  /?status=&target=&prefix=&since=&until=&order=&limit=&cursor=
//	POST /{id}/stop     stop the task
//	POST /{id}/retry    run a Failed, Stopped, Expired or Invalid task again
//	GET  /-/counts      how many tasks each target has in each status
//
// Times in since and until are RFC 3339. Answers are JSON in Function
// Compute's field names where FC has one.
func TaskAPI(s task.Store, opts *APIOptions) http.Handler {
	a := &api{store: s, redact: map[string]bool{}}
	for _, h := range defaultRedacted {
		a.redact[http.CanonicalHeaderKey(h)] = true
	}
	if opts != nil {
		for _, h := range opts.RedactHeaders {
			a.redact[http.CanonicalHeaderKey(h)] = true
		}
	}
	var authorize func(*http.Request, string, string) error
	if opts != nil {
		authorize = opts.Authorize
	}
	mux := http.NewServeMux()
	handle := func(pattern, action string, h http.HandlerFunc) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if authorize != nil {
				if err := authorize(r, action, r.PathValue("id")); err != nil {
					if errors.Is(err, task.ErrNotFound) {
						writeError(w, http.StatusNotFound, CodeTaskNotFound, "no task has that id")
						return
					}
					writeError(w, http.StatusForbidden, CodeForbidden, err.Error())
					return
				}
			}
			h(w, r)
		})
	}
	handle("GET /{$}", "list", a.list)
	handle("GET /-/counts", "counts", a.counts)
	handle("GET /{id}", "get", a.get)
	handle("POST /{id}/stop", "stop", a.stop)
	handle("POST /{id}/retry", "retry", a.retry)
	crossOrigin := http.NewCrossOriginProtection()
	if opts != nil {
		for _, o := range opts.TrustedOrigins {
			if err := crossOrigin.AddTrustedOrigin(o); err != nil {
				panic("trigger: TaskAPI: " + err.Error())
			}
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := crossOrigin.Check(r); err != nil {
			writeError(w, http.StatusForbidden, CodeForbidden, "a browser's cross-origin "+r.Method+" is refused; see APIOptions.TrustedOrigins")
			return
		}
		switch p := r.URL.Path; {
		case p == "":
			// Mounted as "/tasks" with the prefix stripped: the list.
			r = withPath(r, "/")
		case !routable(r.URL.EscapedPath()):
			// The mux would redirect to the cleaned path, which has lost
			// the prefix the API is mounted under.
			writeError(w, http.StatusNotFound, CodeNotFound, "the task API has no "+p)
			return
		}
		if _, pattern := mux.Handler(r); pattern == "" {
			unrouted(mux, w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// unrouted answers a request that matches no route of the task API, as the
// mux would (404, or 405 with Allow), but in JSON with a stable code like
// every other answer of the API.
func unrouted(mux *http.ServeMux, w http.ResponseWriter, r *http.Request) {
	sw := &statusOnly{ResponseWriter: w}
	mux.ServeHTTP(sw, r)
	if sw.status == http.StatusMethodNotAllowed {
		writeError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, r.Method+" is not allowed here; see the Allow header")
		return
	}
	writeError(w, http.StatusNotFound, CodeNotFound, "the task API has no "+r.URL.Path)
}

// routable reports whether ServeMux routes the escaped path p as it is,
// without redirecting: rooted, and with no empty, "." or ".." segment.
func routable(p string) bool {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return strings.HasPrefix(p, "/") && c == p
}

// withPath returns a shallow copy of r for path p, as http.StripPrefix
// makes one.
func withPath(r *http.Request, p string) *http.Request {
	r2 := new(http.Request)
	*r2 = *r
	r2.URL = new(url.URL)
	*r2.URL = *r.URL
	r2.URL.Path, r2.URL.RawPath = p, ""
	return r2
}

// statusOnly keeps the status and headers (Allow) that a handler sets and
// drops its body.
type statusOnly struct {
	http.ResponseWriter
	status int
}

func (s *statusOnly) WriteHeader(code int)        { s.status = code }
func (s *statusOnly) Write(b []byte) (int, error) { return len(b), nil }

type api struct {
	store  task.Store
	redact map[string]bool
}

func (a *api) get(w http.ResponseWriter, r *http.Request) {
	t, err := task.Query(r.Context(), a.store, r.PathValue("id"))
	if err != nil {
		writeStoreError(w, err)
		return
	}
	withPayload := false
	if v := r.URL.Query().Get("includePayload"); v != "" {
		if withPayload, err = strconv.ParseBool(v); err != nil {
			writeError(w, http.StatusBadRequest, CodeInvalidArgument, "includePayload must be true or false")
			return
		}
	}
	writeJSON(w, http.StatusOK, a.view(t, withPayload))
}

func (a *api) stop(w http.ResponseWriter, r *http.Request) {
	t, err := task.Stop(r.Context(), a.store, r.PathValue("id"))
	if errors.Is(err, task.ErrFinished) {
		a.conflict(w, r, CodeTaskFinished, "only an unfinished task can be stopped", task.Status.Terminal)
		return
	}
	if err != nil {
		writeStoreError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.view(t, false))
}

func (a *api) retry(w http.ResponseWriter, r *http.Request) {
	t, err := task.Retry(r.Context(), a.store, r.PathValue("id"), "retried through the task API")
	if errors.Is(err, task.ErrTargetNotRegistered) {
		writeError(w, http.StatusConflict, CodeTaskNotRetryable, "no running scheduler has the task's target: it would never run")
		return
	}
	if errors.Is(err, task.ErrNotRetryable) {
		a.conflict(w, r, CodeTaskNotRetryable, "only a Failed, Stopped, Expired or Invalid task can be retried",
			func(s task.Status) bool { return !s.Retryable() })
		return
	}
	if err != nil {
		writeStoreError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.view(t, false))
}

// conflict answers 409 to a stop or retry that the task's status refuses,
// naming the status (if it still refuses: the task may have moved on
// since) rather than the store's error chain.
func (a *api) conflict(w http.ResponseWriter, r *http.Request, code, rule string, refuses func(task.Status) bool) {
	msg := rule
	if t, err := task.Query(r.Context(), a.store, r.PathValue("id")); err == nil && refuses(t.Status) {
		msg = "the task is " + string(t.Status) + "; " + rule
	}
	writeError(w, http.StatusConflict, code, msg)
}

func (a *api) counts(w http.ResponseWriter, r *http.Request) {
	counts, err := task.Counts(r.Context(), a.store)
	if err != nil {
		writeStoreError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Counts []task.Count `json:"counts"`
	}{counts})
}

func (a *api) list(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilter(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, CodeInvalidArgument, err.Error())
		return
	}
	page, err := task.List(r.Context(), a.store, f)
	if err != nil {
		writeStoreError(w, err)
		return
	}
	out := listView{Tasks: make([]taskView, len(page.Tasks)), NextCursor: page.Next}
	for i, t := range page.Tasks {
		out.Tasks[i] = a.view(t, false)
	}
	writeJSON(w, http.StatusOK, out)
}

var errParam = errors.New("invalid query parameter")

func parseFilter(r *http.Request) (task.Filter, error) {
	q := r.URL.Query()
	f := task.Filter{Target: q.Get("target"), IDPrefix: q.Get("prefix"), Cursor: q.Get("cursor")}
	for _, v := range q["status"] {
		for name := range strings.SplitSeq(v, ",") {
			s, err := task.ParseStatus(strings.TrimSpace(name))
			if err != nil {
				return f, err
			}
			f.Statuses = append(f.Statuses, s)
		}
	}
	switch o := q.Get("order"); o {
	case "", "desc":
	case "asc":
		f.Order = task.OldestFirst
	default:
		return f, fmt.Errorf(`%w: order must be "asc" or "desc"`, errParam)
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > task.MaxLimit {
			return f, fmt.Errorf("%w: limit must be 1..%d", errParam, task.MaxLimit)
		}
		f.Limit = n
	}
	for name, dst := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := q.Get(name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return f, fmt.Errorf("%w: %s must be an RFC 3339 time", errParam, name)
			}
			*dst = t
		}
	}
	return f, nil
}

func writeStoreError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, task.ErrInvalidID):
		writeError(w, http.StatusBadRequest, CodeInvalidTaskID, err.Error())
	case errors.Is(err, task.ErrInvalidFilter):
		writeError(w, http.StatusBadRequest, CodeInvalidArgument, err.Error())
	case errors.Is(err, task.ErrNotFound):
		writeError(w, http.StatusNotFound, CodeTaskNotFound, "no task has that id")
	case errors.Is(err, task.ErrFinished):
		writeError(w, http.StatusConflict, CodeTaskFinished, err.Error())
	case errors.Is(err, task.ErrNotRetryable):
		writeError(w, http.StatusConflict, CodeTaskNotRetryable, err.Error())
	default:
		writeUnavailable(w, DefaultRetryAfter, CodeStoreUnavailable, "the task store is unavailable; try again later")
	}
}

type listView struct {
	Tasks      []taskView `json:"tasks"`
	NextCursor string     `json:"nextCursor,omitempty"`
}

// taskView is a task as the API shows it, in FC's field names.
type taskView struct {
	ID                  string           `json:"id"`
	Target              string           `json:"target"`
	Status              task.Status      `json:"status"`
	CreatedTime         time.Time        `json:"createdTime"`
	StartedTime         *time.Time       `json:"startedTime,omitempty"`
	EndTime             *time.Time       `json:"endTime,omitempty"`
	DurationMs          *int64           `json:"durationMs,omitempty"`
	NextAttemptTime     *time.Time       `json:"nextAttemptTime,omitempty"`
	InvocationCount     int              `json:"invocationCount"`
	AlreadyRetriedTimes int              `json:"alreadyRetriedTimes"`
	LastError           string           `json:"lastError,omitempty"`
	Events              []task.Event     `json:"events"`
	Progress            *task.Progress   `json:"progress,omitempty"`
	Logs                []task.LogRecord `json:"logs,omitempty"`
	Deliveries          []task.Delivery  `json:"destinationStatus,omitempty"`
	Request             requestView      `json:"request"`
	Response            *responseView    `json:"response,omitempty"`
	// ReturnPayload is the response body as text (base64 when it is not
	// UTF-8, as ReturnPayloadEncoding says).
	ReturnPayload         string `json:"returnPayload,omitempty"`
	ReturnPayloadEncoding string `json:"returnPayloadEncoding,omitempty"`
}

type requestView struct {
	Method          string              `json:"method"`
	URL             string              `json:"url"`
	Host            string              `json:"host,omitempty"`
	RemoteAddr      string              `json:"remoteAddr,omitempty"`
	Headers         map[string][]string `json:"headers,omitempty"`
	BodySize        int64               `json:"bodySize"`
	Payload         string              `json:"requestPayload,omitempty"`
	PayloadEncoding string              `json:"requestPayloadEncoding,omitempty"`
	// PayloadOmitted says that a body asked for is not shown: it is kept
	// in a blob file, too large for an answer.
	PayloadOmitted bool `json:"requestPayloadOmitted,omitempty"`
}

type responseView struct {
	StatusCode int                 `json:"statusCode"`
	Headers    map[string][]string `json:"headers,omitempty"`
	BodySize   int64               `json:"bodySize"`
	Truncated  bool                `json:"truncated,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (a *api) view(t *task.Task, withPayload bool) taskView {
	v := taskView{
		ID:                  t.ID,
		Target:              t.Target,
		Status:              t.Status,
		CreatedTime:         t.CreatedAt,
		StartedTime:         timePtr(t.StartedAt),
		EndTime:             timePtr(t.FinishedAt),
		NextAttemptTime:     timePtr(t.ReadyAt),
		InvocationCount:     t.Attempts,
		AlreadyRetriedTimes: max(t.Attempts-1, 0),
		LastError:           t.LastError,
		Events:              t.Events,
		Progress:            t.Progress,
		Logs:                t.Logs,
		Deliveries:          t.Deliveries,
		Request: requestView{
			Method:     t.Request.Method,
			URL:        t.Request.URL,
			Host:       t.Request.Host,
			RemoteAddr: t.Request.RemoteAddr,
			Headers:    a.redacted(t.Request.Header),
			BodySize:   t.Request.BodySize,
		},
	}
	if v.Events == nil {
		v.Events = []task.Event{}
	}
	if !t.StartedAt.IsZero() && !t.FinishedAt.IsZero() {
		d := t.FinishedAt.Sub(t.StartedAt).Milliseconds()
		v.DurationMs = &d
	}
	if withPayload {
		v.Request.Payload, v.Request.PayloadEncoding = textOrBase64(t.Request.Body)
		v.Request.PayloadOmitted = t.Request.BodySize > int64(len(t.Request.Body))
	}
	if res := t.Response; res != nil {
		v.Response = &responseView{
			StatusCode: res.StatusCode,
			Headers:    a.redacted(res.Header),
			BodySize:   res.BodySize,
			Truncated:  res.BodySize > int64(len(res.Body)),
		}
		v.ReturnPayload, v.ReturnPayloadEncoding = textOrBase64(res.Body)
	}
	return v
}

func (a *api) redacted(h http.Header) map[string][]string {
	if len(h) == 0 {
		return nil
	}
	out := make(map[string][]string, len(h))
	for k, vs := range h {
		if a.redact[http.CanonicalHeaderKey(k)] {
			out[k] = []string{"[redacted]"}
			continue
		}
		out[k] = vs
	}
	return out
}

func textOrBase64(b []byte) (string, string) {
	if utf8.Valid(b) {
		return string(b), ""
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}
