package trigger

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/offload-go/offload/internal/clip"
	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// Request headers of the HTTP contract.
const (
	HeaderInvocationType = "X-Fc-Invocation-Type"
	HeaderAsyncDelay     = "X-Fc-Async-Delay"
	HeaderAsyncTaskID    = "X-Fc-Async-Task-Id"
	HeaderStatefulID     = "X-Fc-Stateful-Async-Invocation-Id"
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderRequestID      = invoke.HeaderRequestID
)

// Defaults for Options.
const (
	DefaultMaxBodyBytes    = 64 << 20
	DefaultMaxDelay        = time.Hour
	DefaultInlineBodyLimit = 256 << 10
	DefaultRetryAfter      = time.Second
	maxIdempotencyKeyLen   = 255
)

// Enqueuer is what the middleware needs from the scheduler;
// *invoke.Scheduler implements it.
type Enqueuer interface {
	Register(target string, h http.Handler, p *invoke.Policy) error
	// Admit refuses early (before the body is read) what Enqueue would
	// refuse for the target's state: a full queue, a shutdown.
	Admit(ctx context.Context, target string) error
	Enqueue(ctx context.Context, job *queue.Job) (queue.Receipt, error)
	CreateBlob() (queue.Blob, error)
	Capture(r *http.Request) map[string]string
}

var _ Enqueuer = (*invoke.Scheduler)(nil)

// Options configures a Trigger. A nil *Options means all defaults.
type Options struct {
	// TaskPath is where the application mounted TaskAPI, such as
	// "/tasks/" ("/tasks" means the same); a 202 then carries Location:
	// TaskPath + id. If empty, no Location is sent.
	TaskPath string
	// MaxBodyBytes bounds an async request's body; a larger one is answered
	// 413 and nothing is stored. Defaults to DefaultMaxBodyBytes (64 MiB).
	MaxBodyBytes int64
	// MaxDelay bounds X-Fc-Async-Delay. Defaults to DefaultMaxDelay (1 h).
	MaxDelay time.Duration
	// InlineBodyLimit is the largest body stored inside the database;
	// larger bodies are streamed to a blob file, so memory stays bounded
	// whatever the upload's size. Defaults to DefaultInlineBodyLimit.
	InlineBodyLimit int
	// RetryAfter is the Retry-After of a 503. Defaults to DefaultRetryAfter.
	RetryAfter time.Duration
	// StripHeaders names request headers removed before an async request
	// is stored, such as Authorization once an auth middleware has checked
	// it and Capture has kept who the user is: they never reach the disk,
	// and the replay does not see them.
	StripHeaders []string
}

// Trigger makes handlers answer async requests by storing them.
type Trigger struct {
	e      Enqueuer
	opts   Options
	states sync.Pool // of *acceptState
}

// acceptState is what one accept needs besides the request, pooled: the
// stored request, the job and the inline body's buffer. The queue has
// copied all of it into its record when Enqueue returns, so they are
// reused after that.
type acceptState struct {
	req reqcodec.Request
	job queue.Job
	buf bytes.Buffer
	lr  io.LimitedReader
}

// maxPooledBuf bounds the buffers kept for reuse, so that one large inline
// body does not pin its memory.
const maxPooledBuf = 64 << 10

func (tr *Trigger) getState() *acceptState {
	if st, ok := tr.states.Get().(*acceptState); ok {
		return st
	}
	return new(acceptState)
}

func (tr *Trigger) putState(st *acceptState) {
	if st.buf.Cap() > maxPooledBuf {
		return
	}
	st.req = reqcodec.Request{}
	st.job = queue.Job{}
	st.lr = io.LimitedReader{}
	st.buf.Reset()
	tr.states.Put(st)
}

// New returns a Trigger that stores async requests through e.
func New(e Enqueuer, opts *Options) *Trigger {
	var o Options
	if opts != nil {
		o = *opts
	}
	o.MaxBodyBytes = cmp.Or(o.MaxBodyBytes, DefaultMaxBodyBytes)
	o.MaxDelay = cmp.Or(o.MaxDelay, DefaultMaxDelay)
	o.InlineBodyLimit = cmp.Or(o.InlineBodyLimit, DefaultInlineBodyLimit)
	o.RetryAfter = cmp.Or(o.RetryAfter, DefaultRetryAfter)
	if o.TaskPath != "" && !strings.HasSuffix(o.TaskPath, "/") {
		o.TaskPath += "/" // "/tasks", as mounted, still gives "/tasks/{id}"
	}
	o.StripHeaders = slices.Clone(o.StripHeaders)
	for i, k := range o.StripHeaders {
		o.StripHeaders[i] = http.CanonicalHeaderKey(k)
	}
	return &Trigger{e: e, opts: o}
}

// Async registers h as target with policy p (nil for defaults) and returns
// h wrapped by the middleware. Like http.ServeMux.Handle with a bad
// pattern, it panics if the target cannot be registered (a name taken or
// invalid, a policy out of range, the scheduler already running); to get
// an error instead, call Register and Middleware.
func (tr *Trigger) Async(target string, h http.Handler, p *invoke.Policy) http.Handler {
	if err := tr.e.Register(target, h, p); err != nil {
		panic(fmt.Sprintf("trigger: %v", err))
	}
	return tr.Middleware(target)(h)
}

// Middleware returns middleware that stores async requests for target
// (registered already) and passes every other request to the handler it
// wraps. It works with any router: http.ServeMux, chi, gorilla/mux.
func (tr *Trigger) Middleware(target string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			async, preferred, ok := classify(w, r)
			if !ok {
				return
			}
			if !async {
				next.ServeHTTP(w, r)
				return
			}
			tr.accept(w, r, target, preferred)
		})
	}
}

// classify reports whether r asks for async invocation, and whether it
// asked by Prefer. It answers 400 itself for an invalid invocation type.
func classify(w http.ResponseWriter, r *http.Request) (async, preferred, ok bool) {
	if len(r.Header[HeaderInvocationType]) == 0 && len(r.Header["Prefer"]) == 0 {
		return false, false, true // the common sync call, decided at once
	}
	if _, replay := task.FromContext(r.Context()); replay {
		return false, false, true // a replay runs the handler itself
	}
	if conflicting(r.Header, HeaderInvocationType, equalFoldASCII) {
		writeError(w, http.StatusBadRequest, CodeInvalidInvocationType, repeated(HeaderInvocationType))
		return false, false, false
	}
	v := r.Header.Get(HeaderInvocationType)
	switch {
	case len(r.Header[HeaderInvocationType]) == 0:
		if prefersAsync(r.Header.Values("Prefer")) {
			return true, true, true
		}
		return false, false, true
	case equalFoldASCII(v, "Sync"):
		return false, false, true
	case equalFoldASCII(v, "Async"):
		return true, prefersAsync(r.Header.Values("Prefer")), true
	default:
		writeError(w, http.StatusBadRequest, CodeInvalidInvocationType,
			fmt.Sprintf("%s must be Sync or Async, not %q", HeaderInvocationType, clip.Ellipsis(v, 40)))
		return false, false, false
	}
}

// conflicting reports whether a header that must have one value is
// repeated with values that are not the same, which a proxy and this
// middleware could read differently (one taking the first, the other the
// last).
func conflicting(h http.Header, name string, same func(a, b string) bool) bool {
	vs := h[name]
	for _, v := range vs {
		if !same(v, vs[0]) {
			return true
		}
	}
	return false
}

// sent returns the value of the header name and whether the request sent
// it at all: an async header sent empty (a client's template left blank)
// is malformed, not absent, so that its retries are not accepted as new
// tasks.
func sent(h http.Header, name string) (string, bool) {
	vs := h[name]
	if len(vs) == 0 {
		return "", false
	}
	return vs[0], true
}

func repeated(name string) string {
	return name + " is given more than once, with different values"
}

// prefersAsync finds the respond-async preference (RFC 7240) among Prefer
// header values: comma-separated preferences, each with optional
// ;-separated parameters, whose values may be quoted strings.
func prefersAsync(values []string) bool {
	for _, v := range values {
		for v != "" {
			var pref string
			pref, v = nextElement(v)
			name, _, _ := strings.Cut(pref, ";")
			name, _, _ = strings.Cut(name, "=")
			if equalFoldASCII(strings.TrimSpace(name), "respond-async") {
				return true
			}
		}
	}
	return false
}

// equalFoldASCII reports whether s and t are equal under ASCII case
// folding only. Header tokens are ASCII: strings.EqualFold would also take
// Unicode lookalikes, such as "A\u017fync" (a long s) for "Async", which a
// proxy in front of us would not read as the same word.
func equalFoldASCII(s, t string) bool {
	if len(s) != len(t) {
		return false
	}
	for i := 0; i < len(s); i++ {
		a, b := s[i], t[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// nextElement splits the first element off a comma-separated header
// value; a comma inside a quoted string does not count.
func nextElement(s string) (elem, rest string) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++ // a quoted-pair
		case c == '"':
			quoted = !quoted
		case c == ',' && !quoted:
			return s[:i], s[i+1:]
		}
	}
	return s, ""
}

// params are the async headers of a request, validated.
type params struct {
	delay          time.Duration
	id             string
	idempotencyKey string
}

func (tr *Trigger) parse(h http.Header) (params, string, string) {
	var p params
	for _, c := range [...]struct{ name, code string }{
		{HeaderAsyncDelay, CodeInvalidAsyncDelay},
		{HeaderAsyncTaskID, CodeInvalidTaskID},
		{HeaderStatefulID, CodeInvalidTaskID},
		{HeaderIdempotencyKey, CodeInvalidIdempotencyKey},
	} {
		if conflicting(h, c.name, func(a, b string) bool { return a == b }) {
			return p, c.code, repeated(c.name)
		}
	}
	if v, ok := sent(h, HeaderAsyncDelay); ok {
		secs, err := strconv.ParseUint(v, 10, 32)
		if err != nil || time.Duration(secs)*time.Second > tr.opts.MaxDelay {
			return p, CodeInvalidAsyncDelay, fmt.Sprintf("%s must be whole seconds from 0 to %d, not %q",
				HeaderAsyncDelay, int(tr.opts.MaxDelay/time.Second), clip.Ellipsis(v, 40))
		}
		p.delay = time.Duration(secs) * time.Second
	}
	id, hasID := sent(h, HeaderAsyncTaskID)
	stateful, hasStateful := sent(h, HeaderStatefulID)
	if hasID && hasStateful && id != stateful {
		return p, CodeInvalidTaskID, fmt.Sprintf("%s and %s name different tasks", HeaderAsyncTaskID, HeaderStatefulID)
	}
	if hasID || hasStateful {
		p.id = cmp.Or(id, stateful)
		if err := task.CheckCallerID(p.id); err != nil {
			return p, CodeInvalidTaskID, err.Error()
		}
	}
	if k, ok := sent(h, HeaderIdempotencyKey); ok {
		if k == "" || len(k) > maxIdempotencyKeyLen || strings.IndexFunc(k, func(c rune) bool { return c < 0x21 || c > 0x7e }) >= 0 {
			return p, CodeInvalidIdempotencyKey, fmt.Sprintf("%s must be 1 to %d visible ASCII characters", HeaderIdempotencyKey, maxIdempotencyKeyLen)
		}
		p.idempotencyKey = k
	}
	return p, "", ""
}

// accept stores an async request and answers 202, or answers why not.
func (tr *Trigger) accept(w http.ResponseWriter, r *http.Request, target string, preferred bool) {
	p, code, msg := tr.parse(r.Header)
	if code != "" {
		writeError(w, http.StatusBadRequest, code, msg)
		return
	}
	if r.ContentLength > tr.opts.MaxBodyBytes {
		tr.tooLarge(w)
		return
	}
	// Refuse a full queue or a shutdown before reading (and storing) the
	// body. A request with an Idempotency-Key skips this: it may be the
	// retry of one already accepted, which is answered its first 202.
	if p.idempotencyKey == "" {
		if err := tr.e.Admit(r.Context(), target); err != nil {
			tr.enqueueError(w, err, p.id)
			return
		}
	}
	st := tr.getState()
	defer tr.putState(st)
	req := &st.req
	*req = reqcodec.Request{
		Method:     r.Method,
		RequestURI: r.URL.RequestURI(),
		Proto:      r.Proto,
		Host:       r.Host,
		RemoteAddr: r.RemoteAddr,
		Header:     tr.storedHeader(r.Header),
		Pattern:    r.Pattern,
		PathValues: pathValues(r),
		Values:     reqcodec.SortedKVs(tr.e.Capture(r)),
	}
	var sum hash.Hash
	if p.idempotencyKey != "" {
		// A caller-chosen ID is part of the request: a retry under another
		// ID must not be answered with the first task. A request URI holds
		// no space, so no request without an ID hashes the same.
		uri := req.RequestURI
		if p.id != "" {
			uri += " " + p.id
		}
		sum = reqcodec.NewFingerprint(r.Method, uri, req.Values)
	}
	blob, err := tr.readBody(w, r, st, sum)
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			tr.tooLarge(w)
			return
		}
		if errors.As(err, new(*storeError)) {
			writeUnavailable(w, tr.opts.RetryAfter, CodeStoreUnavailable, "the request could not be stored; try again later")
			return
		}
		writeError(w, http.StatusBadRequest, CodeInvalidArgument, "reading the request body: "+err.Error())
		return
	}
	job := &st.job
	*job = queue.Job{ID: p.id, Target: target, IdempotencyKey: p.idempotencyKey, Request: req}
	if p.delay > 0 {
		job.ReadyAt = time.Now().Add(p.delay)
	}
	if sum != nil {
		sum.Sum(job.Fingerprint[:0])
	}
	rc, err := tr.e.Enqueue(r.Context(), job)
	if err != nil {
		if blob != nil {
			_ = blob.Remove()
		}
		tr.enqueueError(w, err, p.id)
		return
	}
	if blob != nil && rc.Replayed {
		_ = blob.Remove() // the earlier acceptance holds its own copy
	}
	tr.writeAccepted(w, &st.buf, rc.ID, preferred)
}

// Header values of every 202, shared: net/http only reads them.
var (
	jsonContentType     = []string{"application/json"}
	noSniff             = []string{"nosniff"}
	respondAsyncApplied = []string{"respond-async"}
)

// writeAccepted answers 202 for task id. It is writeJSON of
// {"id": id, "status": "Enqueued"} made by hand, with no allocation but
// the headers': an ID, generated or caller-chosen, holds only characters
// that JSON need not escape.
func (tr *Trigger) writeAccepted(w http.ResponseWriter, buf *bytes.Buffer, id string, preferred bool) {
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["X-Content-Type-Options"] = noSniff
	if tr.opts.TaskPath != "" {
		vs := [...]string{id, tr.opts.TaskPath + id} // one allocation for both
		h[HeaderRequestID] = vs[0:1:1]
		h["Location"] = vs[1:2:2]
	} else {
		h[HeaderRequestID] = []string{id}
	}
	if preferred {
		h["Preference-Applied"] = respondAsyncApplied
	}
	if !plainID(id) { // not reached: the queue checks IDs; but be safe
		writeJSON(w, http.StatusAccepted, struct {
			ID     string      `json:"id"`
			Status task.Status `json:"status"`
		}{id, task.Enqueued})
		return
	}
	w.WriteHeader(http.StatusAccepted)
	buf.Reset()
	buf.WriteString(`{"id":"`)
	buf.WriteString(id)
	buf.WriteString(`","status":"` + string(task.Enqueued) + "\"}\n")
	_, _ = w.Write(buf.Bytes())
}

// plainID reports whether id needs no escaping in JSON.
func plainID(id string) bool {
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// readBody reads r's body into st.req: inline (in st.buf) when it fits in
// the inline limit, else streamed to a blob that is synced before return.
// sum, if not nil, hashes every byte.
func (tr *Trigger) readBody(w http.ResponseWriter, r *http.Request, st *acceptState, sum hash.Hash) (queue.Blob, error) {
	req, buf := &st.req, &st.buf
	body := io.Reader(http.MaxBytesReader(w, r.Body, tr.opts.MaxBodyBytes))
	if sum != nil {
		body = io.TeeReader(body, sum)
	}
	limit := int64(tr.opts.InlineBodyLimit)
	st.lr = io.LimitedReader{R: body, N: limit + 1}
	n, err := buf.ReadFrom(&st.lr)
	if err != nil {
		return nil, err
	}
	if n <= limit {
		req.Body, req.BodySize = buf.Bytes(), n
		return nil, nil
	}
	blob, err := tr.e.CreateBlob()
	if err != nil {
		return nil, &storeError{err}
	}
	bw := blobWriter{blob}
	written, err := buf.WriteTo(bw)
	if err == nil {
		var rest int64
		rest, err = io.Copy(bw, body)
		written += rest
	}
	if err == nil {
		if err = blob.Close(); err != nil {
			err = &storeError{err}
		}
	}
	if err != nil {
		_ = blob.Remove()
		return nil, err
	}
	req.Blob, req.BodySize = blob.Name(), written
	return blob, nil
}

// storeError is a failure of the store (a full disk, say) while a body
// is saved, told apart from a failure to read the client's body: it is
// answered 503, not 400.
type storeError struct{ err error }

func (e *storeError) Error() string { return e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }

// blobWriter marks the blob's write errors as store errors.
type blobWriter struct{ b queue.Blob }

func (w blobWriter) Write(p []byte) (int, error) {
	n, err := w.b.Write(p)
	if err != nil {
		err = &storeError{err}
	}
	return n, err
}

func (tr *Trigger) tooLarge(w http.ResponseWriter) {
	writeError(w, http.StatusRequestEntityTooLarge, CodeRequestTooLarge,
		fmt.Sprintf("an async request body may be at most %d bytes", tr.opts.MaxBodyBytes))
}

func (tr *Trigger) enqueueError(w http.ResponseWriter, err error, id string) {
	switch {
	case errors.Is(err, task.ErrConflict):
		if tr.opts.TaskPath != "" {
			w.Header().Set("Location", tr.opts.TaskPath+id)
		}
		writeError(w, http.StatusConflict, CodeTaskAlreadyExists, fmt.Sprintf("a task with id %q already exists", id))
	case errors.Is(err, task.ErrIdempotencyMismatch):
		writeError(w, http.StatusUnprocessableEntity, CodeIdempotencyKeyMismatch,
			"this Idempotency-Key was used for a different request")
	case errors.Is(err, task.ErrQueueFull):
		writeUnavailable(w, tr.opts.RetryAfter, CodeQueueFull, "too many tasks are waiting; try again later")
	case errors.Is(err, task.ErrClosed):
		writeUnavailable(w, tr.opts.RetryAfter, CodeShuttingDown, "the service is shutting down; try again later")
	case errors.Is(err, invoke.ErrUnknownTarget), errors.Is(err, task.ErrInvalidID):
		writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
	default:
		writeUnavailable(w, tr.opts.RetryAfter, CodeStoreUnavailable, "the request could not be stored; try again later")
	}
}

// pathValues reads the wildcards of the ServeMux pattern that routed r, so
// that r.PathValue works on replay.
func pathValues(r *http.Request) []reqcodec.KV {
	var kvs []reqcodec.KV
	for _, w := range wildcards(r.Pattern) {
		kvs = append(kvs, reqcodec.KV{Key: w, Value: r.PathValue(w)})
	}
	return kvs
}

// wildcards returns the names of a route pattern's wildcards: ServeMux's
// {name} and {name...}, and chi's {name}, {name:regexp} (whose regexp
// may hold braces of its own) and the catch-all "/*", whose value chi
// gives as r.PathValue("*").
func wildcards(pattern string) []string {
	var names []string
	depth, start := 0, 0
	for i := 0; i < len(pattern); i++ {
		switch pattern[i] {
		case '{':
			if depth == 0 {
				start = i + 1
			}
			depth++
		case '}':
			if depth == 0 {
				continue
			}
			if depth--; depth == 0 {
				name, _, _ := strings.Cut(pattern[start:i], ":")
				name = strings.TrimSuffix(name, "...")
				if name != "" && name != "$" {
					names = append(names, name)
				}
			}
		}
	}
	if strings.HasSuffix(pattern, "/*") {
		names = append(names, "*")
	}
	return names
}

// storedHeader is h less Options.StripHeaders; h itself when there are none
// to strip, to spare a copy on the hot path.
func (tr *Trigger) storedHeader(h http.Header) http.Header {
	for _, k := range tr.opts.StripHeaders {
		if _, ok := h[k]; ok {
			h = h.Clone()
			for _, k := range tr.opts.StripHeaders {
				delete(h, k)
			}
			return h
		}
	}
	return h
}
