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
	"strconv"
	"strings"
	"sync"
	"time"

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
	Enqueue(ctx context.Context, job *queue.Job) (queue.Receipt, error)
	CreateBlob() (queue.Blob, error)
	Capture(r *http.Request) map[string]string
}

var _ Enqueuer = (*invoke.Scheduler)(nil)

// Options configures a Trigger. A nil *Options means all defaults.
type Options struct {
	// TaskPath is where the application mounted TaskAPI, such as
	// "/tasks/"; a 202 then carries Location: TaskPath + id. If empty, no
	// Location is sent.
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
}

// Trigger makes handlers answer async requests by storing them.
type Trigger struct {
	e    Enqueuer
	opts Options
	bufs sync.Pool
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
	if _, replay := task.FromContext(r.Context()); replay {
		return false, false, true // a replay runs the handler itself
	}
	switch v := r.Header.Get(HeaderInvocationType); {
	case v == "":
		if prefersAsync(r.Header.Values("Prefer")) {
			return true, true, true
		}
		return false, false, true
	case strings.EqualFold(v, "Sync"):
		return false, false, true
	case strings.EqualFold(v, "Async"):
		return true, false, true
	default:
		writeError(w, http.StatusBadRequest, CodeInvalidInvocationType,
			fmt.Sprintf("%s must be Sync or Async, not %q", HeaderInvocationType, truncate(v, 40)))
		return false, false, false
	}
}

// prefersAsync finds the respond-async preference (RFC 7240) among Prefer
// header values: comma-separated preferences, each with optional
// ;-separated parameters.
func prefersAsync(values []string) bool {
	for _, v := range values {
		for pref := range strings.SplitSeq(v, ",") {
			name, _, _ := strings.Cut(pref, ";")
			name, _, _ = strings.Cut(name, "=")
			if strings.EqualFold(strings.TrimSpace(name), "respond-async") {
				return true
			}
		}
	}
	return false
}

// params are the async headers of a request, validated.
type params struct {
	delay          time.Duration
	id             string
	idempotencyKey string
}

func (tr *Trigger) parse(h http.Header) (params, string, string) {
	var p params
	if v := h.Get(HeaderAsyncDelay); v != "" {
		secs, err := strconv.ParseUint(v, 10, 32)
		if err != nil || time.Duration(secs)*time.Second > tr.opts.MaxDelay {
			return p, CodeInvalidAsyncDelay, fmt.Sprintf("%s must be whole seconds from 0 to %d, not %q",
				HeaderAsyncDelay, int(tr.opts.MaxDelay/time.Second), truncate(v, 40))
		}
		p.delay = time.Duration(secs) * time.Second
	}
	id, stateful := h.Get(HeaderAsyncTaskID), h.Get(HeaderStatefulID)
	if id != "" && stateful != "" && id != stateful {
		return p, CodeInvalidTaskID, fmt.Sprintf("%s and %s name different tasks", HeaderAsyncTaskID, HeaderStatefulID)
	}
	if p.id = cmp.Or(id, stateful); p.id != "" {
		if err := task.CheckCallerID(p.id); err != nil {
			return p, CodeInvalidTaskID, err.Error()
		}
	}
	if k := h.Get(HeaderIdempotencyKey); k != "" {
		if len(k) > maxIdempotencyKeyLen || strings.IndexFunc(k, func(c rune) bool { return c < 0x21 || c > 0x7e }) >= 0 {
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
	req := &reqcodec.Request{
		Method:     r.Method,
		RequestURI: r.URL.RequestURI(),
		Proto:      r.Proto,
		Host:       r.Host,
		RemoteAddr: r.RemoteAddr,
		Header:     r.Header,
		Pattern:    r.Pattern,
		PathValues: pathValues(r),
		Values:     reqcodec.SortedKVs(tr.e.Capture(r)),
	}
	var sum hash.Hash
	if p.idempotencyKey != "" {
		sum = reqcodec.NewFingerprint(r.Method, req.RequestURI)
	}
	buf := tr.getBuf()
	defer tr.bufs.Put(buf)
	blob, err := tr.readBody(w, r, req, buf, sum)
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			tr.tooLarge(w)
			return
		}
		writeError(w, http.StatusBadRequest, CodeInvalidArgument, "reading the request body: "+err.Error())
		return
	}
	job := &queue.Job{ID: p.id, Target: target, IdempotencyKey: p.idempotencyKey, Request: req}
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
	h := w.Header()
	h.Set(HeaderRequestID, rc.ID)
	if tr.opts.TaskPath != "" {
		h.Set("Location", tr.opts.TaskPath+rc.ID)
	}
	if preferred {
		h.Set("Preference-Applied", "respond-async")
	}
	writeJSON(w, http.StatusAccepted, accepted{ID: rc.ID, Status: task.Enqueued})
}

type accepted struct {
	ID     string      `json:"id"`
	Status task.Status `json:"status"`
}

// readBody reads r's body into req: inline when it fits in the inline
// limit, else streamed to a blob that is synced before return. sum, if
// not nil, hashes every byte.
func (tr *Trigger) readBody(w http.ResponseWriter, r *http.Request, req *reqcodec.Request, buf *bytes.Buffer, sum hash.Hash) (queue.Blob, error) {
	body := io.Reader(http.MaxBytesReader(w, r.Body, tr.opts.MaxBodyBytes))
	if sum != nil {
		body = io.TeeReader(body, sum)
	}
	limit := int64(tr.opts.InlineBodyLimit)
	n, err := buf.ReadFrom(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, err
	}
	if n <= limit {
		req.Body, req.BodySize = buf.Bytes(), n
		return nil, nil
	}
	blob, err := tr.e.CreateBlob()
	if err != nil {
		return nil, err
	}
	written, err := buf.WriteTo(blob)
	if err == nil {
		var rest int64
		rest, err = io.Copy(blob, body)
		written += rest
	}
	if err == nil {
		err = blob.Close()
	}
	if err != nil {
		_ = blob.Remove()
		return nil, err
	}
	req.Blob, req.BodySize = blob.Name(), written
	return blob, nil
}

func (tr *Trigger) getBuf() *bytes.Buffer {
	if b, ok := tr.bufs.Get().(*bytes.Buffer); ok {
		b.Reset()
		return b
	}
	return new(bytes.Buffer)
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
	rest := r.Pattern
	for {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			return kvs
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return kvs
		}
		name := strings.TrimSuffix(rest[i+1:i+j], "...")
		rest = rest[i+j+1:]
		if name == "$" || name == "" {
			continue
		}
		kvs = append(kvs, reqcodec.KV{Key: name, Value: r.PathValue(name)})
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
