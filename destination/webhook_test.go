package destination_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/destination/destinationtest"
)

var secret = []byte("0123456789abcdef-test-secret")

// receiver is a webhook endpoint that verifies each POST with
// VerifyRequest, keeps the records that pass, and answers with respond
// (204 if nil).
type receiver struct {
	srv     *httptest.Server
	mu      sync.Mutex
	recs    []destination.Record
	headers []http.Header
	rejects []error
	respond func(w http.ResponseWriter, r *http.Request)
}

func newReceiver(t *testing.T, respond func(w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rv := &receiver{respond: respond}
	rv.srv = httptest.NewServer(http.HandlerFunc(rv.serve))
	t.Cleanup(rv.srv.Close)
	return rv
}

func (rv *receiver) serve(w http.ResponseWriter, r *http.Request) {
	rec, err := destination.VerifyRequest(r, secret, 0)
	rv.mu.Lock()
	if err != nil {
		rv.rejects = append(rv.rejects, err)
	} else {
		rv.recs = append(rv.recs, rec)
		rv.headers = append(rv.headers, r.Header.Clone())
	}
	rv.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	if rv.respond != nil {
		rv.respond(w, r)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (rv *receiver) received() []destination.Record {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	return slices.Clone(rv.recs)
}

func (rv *receiver) webhook(t *testing.T, opts *destination.WebhookOptions) *destination.Webhook {
	t.Helper()
	var o destination.WebhookOptions
	if opts != nil {
		o = *opts
	}
	if o.Client == nil {
		o.Client = rv.srv.Client()
	}
	w, err := destination.NewWebhook(rv.srv.URL+"/hook", secret, &o)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestWebhookConformance(t *testing.T) {
	t.Parallel()
	destinationtest.Run(t, func(t *testing.T) (destination.Destination, func() []destination.Record) {
		rv := newReceiver(t, nil)
		return rv.webhook(t, nil), func() []destination.Record {
			rv.mu.Lock()
			defer rv.mu.Unlock()
			if len(rv.rejects) > 0 {
				t.Errorf("receiver rejected %d POSTs: %v", len(rv.rejects), errors.Join(rv.rejects...))
			}
			return slices.Clone(rv.recs)
		}
	})
}

func TestWebhookHeaders(t *testing.T) {
	t.Parallel()
	rv := newReceiver(t, nil)
	w := rv.webhook(t, &destination.WebhookOptions{Header: http.Header{"Authorization": {"Bearer xyz"}}})
	rec := destination.Record{Version: destination.Version, RequestContext: destination.RequestContext{
		RequestID: "01M8A5JMZP442HFYP7HK6MA4SD", FunctionArn: "work", Condition: destination.Stopped,
	}}
	if err := w.Deliver(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	if len(rv.headers) != 1 {
		t.Fatalf("receiver got %d verified POSTs; want 1 (rejects: %v)", len(rv.headers), rv.rejects)
	}
	h := rv.headers[0]
	for k, v := range map[string]string{
		"Content-Type":              "application/json",
		"Authorization":             "Bearer xyz",
		destination.HeaderRequestID: "01M8A5JMZP442HFYP7HK6MA4SD",
		destination.HeaderCondition: "Stopped",
	} {
		if h.Get(k) != v {
			t.Errorf("header %s = %q; want %q", k, h.Get(k), v)
		}
	}
	if !strings.HasPrefix(h.Get(destination.HeaderSignature), "t=") {
		t.Errorf("signature header %q", h.Get(destination.HeaderSignature))
	}
}

// The secret is copied: changing the caller's slice afterwards does not
// change the signatures.
func TestWebhookCopiesSecret(t *testing.T) {
	t.Parallel()
	rv := newReceiver(t, nil)
	mine := bytes.Clone(secret)
	w, err := destination.NewWebhook(rv.srv.URL, mine, &destination.WebhookOptions{Client: rv.srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	clear(mine)
	if err := w.Deliver(context.Background(), destination.Record{}); err != nil {
		t.Errorf("Deliver after the caller's secret changed: %v", err)
	}
}

func TestWebhookStatus(t *testing.T) {
	t.Parallel()
	for _, code := range []int{200, 201, 202, 204, 299, 300, 304, 400, 401, 404, 409, 429, 500, 502, 503} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			t.Parallel()
			rv := newReceiver(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(code)
				_, _ = io.WriteString(w, "answer")
			})
			err := rv.webhook(t, nil).Deliver(context.Background(), destination.Record{})
			if ok := code >= 200 && code <= 299; ok != (err == nil) {
				t.Errorf("answer %d: Deliver = %v; want success only for 2xx", code, err)
			}
			if err != nil && !strings.Contains(err.Error(), strconv.Itoa(code)) {
				t.Errorf("error %q does not name the status %d", err, code)
			}
			if destination.IsPermanent(err) {
				t.Errorf("answer %d is permanent: %v; the scheduler's tries bound it", code, err)
			}
		})
	}
}

// A receiver's Retry-After on a failed answer becomes a RetryAfterError
// carrying its wait; a failure without one, or with one the header format
// does not allow, stays a plain error, and a 2xx is delivered whatever it
// says.
func TestWebhookRetryAfter(t *testing.T) {
	t.Parallel()
	inAnHour := func() string { return time.Now().Add(time.Hour).UTC().Format(http.TimeFormat) }
	for _, tt := range []struct {
		name  string
		code  int
		value func() string // the header, made when the receiver answers
		want  time.Duration // -1: no RetryAfterError
	}{
		{"seconds", http.StatusTooManyRequests, func() string { return "120" }, 2 * time.Minute},
		{"zero", http.StatusServiceUnavailable, func() string { return "0" }, 0},
		{"date", http.StatusServiceUnavailable, inAnHour, time.Hour},
		{"none", http.StatusInternalServerError, func() string { return "" }, -1},
		{"malformed", http.StatusTooManyRequests, func() string { return "in a bit" }, -1},
		{"delivered", http.StatusOK, func() string { return "120" }, -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rv := newReceiver(t, func(w http.ResponseWriter, r *http.Request) {
				if v := tt.value(); v != "" {
					w.Header().Set("Retry-After", v)
				}
				w.WriteHeader(tt.code)
			})
			err := rv.webhook(t, nil).Deliver(context.Background(), destination.Record{})
			if (err == nil) != (tt.code == http.StatusOK) {
				t.Fatalf("Deliver = %v after a %d", err, tt.code)
			}
			var ra *destination.RetryAfterError
			switch {
			case tt.want < 0 && errors.As(err, &ra):
				t.Errorf("Deliver = %v, a RetryAfterError of %s; want none", err, ra.After)
			case tt.want >= 0 && !errors.As(err, &ra):
				t.Errorf("Deliver = %v; want a RetryAfterError of %s", err, tt.want)
			case tt.want >= 0 && (ra.After > tt.want || ra.After < tt.want-2*time.Second):
				// An HTTP date has whole seconds, and the answer took a moment.
				t.Errorf("RetryAfterError.After = %s; want %s", ra.After, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), strconv.Itoa(tt.code)) {
				t.Errorf("error %q does not name the status %d", err, tt.code)
			}
		})
	}
}

// A receiver that never answers: Timeout ends the POST, and the
// receiver's request context ends with it.
func TestWebhookTimeout(t *testing.T) {
	t.Parallel()
	ended := make(chan struct{}, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Read the body, so that the server watches the connection and
		// ends the request context when the client goes away.
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
		ended <- struct{}{}
	}))
	defer srv.Close()
	w, err := destination.NewWebhook(srv.URL, secret, &destination.WebhookOptions{Client: srv.Client(), Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = w.Deliver(context.Background(), destination.Record{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Deliver to a silent receiver = %v; want a deadline error", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Deliver took %s with a 50ms timeout", took)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Error("the receiver's request context did not end")
	}

	// The caller's context bounds it too.
	w, err = destination.NewWebhook(srv.URL, secret, &destination.WebhookOptions{Client: srv.Client(), Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.Deliver(ctx, destination.Record{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Deliver with the caller's deadline = %v; want a deadline error", err)
	}
}

func TestWebhookUnreachable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	w, err := destination.NewWebhook(url, secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = w.Deliver(context.Background(), destination.Record{})
	if err == nil || destination.IsPermanent(err) {
		t.Errorf("Deliver to a closed port = %v; want a retryable error", err)
	}
}

// A redirect is a failed delivery, never followed: a 302 would turn the
// POST into a bodiless GET that "succeeds", a 307 would send the signed
// record, and the configured headers, to another host.
func TestWebhookDoesNotFollowRedirects(t *testing.T) {
	t.Parallel()
	elsewhere := make(chan string, 16) // room for every try, should they all go
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere <- r.Method + " " + r.Header.Get("X-Api-Key")
	}))
	defer other.Close()
	for _, code := range []int{http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		rv := newReceiver(t, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other.URL+"/stolen", code)
		})
		for _, client := range []*http.Client{nil, {}} { // ours, and one the caller passes
			w, err := destination.NewWebhook(rv.srv.URL, secret, &destination.WebhookOptions{Client: client, Header: http.Header{"X-Api-Key": {"k"}}})
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Deliver(context.Background(), destination.Record{}); err == nil || !strings.Contains(err.Error(), strconv.Itoa(code)) {
				t.Errorf("answer %d: Deliver = %v; want a failure naming it", code, err)
			}
		}
	}
	select {
	case got := <-elsewhere:
		t.Errorf("the redirect was followed: %s", got)
	default:
	}
}

// A webhook's errors are stored on the task and shown: they name the
// host, never the URL's credentials or its path, which may hold a token.
func TestWebhookErrorsKeepTheURLSecret(t *testing.T) {
	t.Parallel()
	rv := newReceiver(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()
	for _, base := range []string{rv.srv.URL, closedURL} {
		u := strings.Replace(base, "://", "://user:hunter22@", 1) + "/services/T0/B0/sEcReTtOkEn"
		w, err := destination.NewWebhook(u, secret, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = w.Deliver(context.Background(), destination.Record{})
		if err == nil || strings.Contains(err.Error(), "hunter22") || strings.Contains(err.Error(), "sEcReTtOkEn") {
			t.Errorf("Deliver = %v; want an error without the password or the path", err)
		}
	}
}

func TestNewWebhookErrors(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"", "example.com/hook", "/hook", "ftp://example.com/hook", "http://", "https:///path",
		"localhost:8080", "http://exa mple.com/", "mailto:a@example.com", "://x"} {
		if w, err := destination.NewWebhook(u, secret, nil); err == nil {
			t.Errorf("NewWebhook(%q) = %v, nil; want an error", u, w)
		}
	}
	for _, u := range []string{"http://example.com/hook", "https://example.com:8443/a?b=c", "http://127.0.0.1:9/"} {
		if _, err := destination.NewWebhook(u, secret, nil); err != nil {
			t.Errorf("NewWebhook(%q): %v", u, err)
		}
	}
	for _, s := range [][]byte{nil, {}, []byte("fifteen bytes!!")} {
		if _, err := destination.NewWebhook("https://example.com", s, nil); err == nil {
			t.Errorf("NewWebhook with a %d-byte secret succeeded", len(s))
		}
	}
	if _, err := destination.NewWebhook("https://example.com", []byte("sixteen bytes!!!"), nil); err != nil {
		t.Errorf("NewWebhook with a 16-byte secret: %v", err)
	}
	if _, err := destination.NewWebhook("https://example.com", secret, &destination.WebhookOptions{Timeout: -time.Second}); err == nil {
		t.Error("NewWebhook with a negative timeout succeeded")
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_790_000_000, 0)
	body := []byte(`{"version":"1.0","requestContext":{"requestId":"x"}}`)
	good := destination.Sign(secret, now, body)
	sigOf := func(h string) string { _, v, _ := strings.Cut(h, ",v1="); return v }
	tests := []struct {
		name      string
		secret    []byte
		header    string
		body      []byte
		tolerance time.Duration
		now       time.Time
		ok        bool
	}{
		{name: "valid", header: good, ok: true},
		{name: "spaces after comma", header: strings.Replace(good, ",", ", ", 1), ok: true},
		{name: "v1 first", header: "v1=" + sigOf(good) + ",t=" + strconv.FormatInt(now.Unix(), 10), ok: true},
		{name: "unknown part ignored", header: good + ",v0=abc", ok: true},
		{name: "at the tolerance, past", now: now.Add(destination.DefaultTolerance), ok: true},
		{name: "at the tolerance, future", now: now.Add(-destination.DefaultTolerance), ok: true},
		{name: "custom tolerance", tolerance: time.Hour, now: now.Add(59 * time.Minute), ok: true},

		{name: "tampered body", body: append(bytes.Clone(body), ' ')},
		{name: "one byte changed", body: bytes.Replace(body, []byte(`"x"`), []byte(`"y"`), 1)},
		{name: "empty body", body: []byte{}},
		{name: "wrong secret", secret: []byte("another-secret-of-16+")},
		{name: "stale", now: now.Add(destination.DefaultTolerance + time.Second)},
		{name: "future", now: now.Add(-destination.DefaultTolerance - time.Second)},
		{name: "stale for a custom tolerance", tolerance: time.Second, now: now.Add(2 * time.Second)},
		{name: "timestamp changed", header: strings.Replace(good, "t=1790000000", "t=1790000001", 1), now: now},
		{name: "missing", header: ""},
		{name: "garbage", header: "garbage"},
		{name: "no timestamp", header: "v1=" + sigOf(good)},
		{name: "non-numeric timestamp", header: "t=abc,v1=" + sigOf(good)},
		{name: "no signature", header: "t=1790000000"},
		{name: "signature not hex", header: "t=1790000000,v1=" + strings.Repeat("zz", 32)},
		{name: "signature short", header: "t=1790000000,v1=" + sigOf(good)[:62]},
		{name: "signature long", header: good + "00"},
		{name: "empty signature", header: "t=1790000000,v1="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sec, header, b, at := secret, good, body, now
			if tt.secret != nil {
				sec = tt.secret
			}
			if tt.header != "" || tt.name == "missing" {
				header = tt.header
			}
			if tt.body != nil {
				b = tt.body
			}
			if !tt.now.IsZero() {
				at = tt.now
			}
			err := destination.Verify(sec, header, b, tt.tolerance, at)
			switch {
			case tt.ok && err != nil:
				t.Errorf("Verify(%q) = %v; want nil", header, err)
			case !tt.ok && !errors.Is(err, destination.ErrSignature):
				t.Errorf("Verify(%q) = %v; want an error wrapping ErrSignature", header, err)
			}
		})
	}
}

func TestVerifyRequest(t *testing.T) {
	t.Parallel()
	body := []byte(`{"version":"1.0","requestContext":{"requestId":"r1","functionArn":"work","condition":"Success","approximateInvokeCount":1},"requestPayload":"","responseContext":{},"responsePayload":""}`)
	req := func(b []byte, sig string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, "/hook", bytes.NewReader(b))
		if sig != "" {
			r.Header.Set(destination.HeaderSignature, sig)
		}
		return r
	}
	now := time.Now()
	rec, err := destination.VerifyRequest(req(body, destination.Sign(secret, now, body)), secret, 0)
	if err != nil || rec.RequestContext.RequestID != "r1" || rec.RequestContext.Condition != destination.Success {
		t.Errorf("VerifyRequest = %+v, %v", rec, err)
	}
	for name, r := range map[string]*http.Request{
		"tampered":    req(bytes.Replace(body, []byte("r1"), []byte("r2"), 1), destination.Sign(secret, now, body)),
		"old":         req(body, destination.Sign(secret, now.Add(-time.Hour), body)),
		"future":      req(body, destination.Sign(secret, now.Add(time.Hour), body)),
		"wrong key":   req(body, destination.Sign([]byte("not-the-right-secret"), now, body)),
		"no header":   req(body, ""),
		"bad header":  req(body, "t=now,v1=abc"),
		"tolerance 1": req(body, destination.Sign(secret, now.Add(-time.Minute), body)),
	} {
		tol := time.Duration(0)
		if name == "tolerance 1" {
			tol = time.Second
		}
		if _, err := destination.VerifyRequest(r, secret, tol); !errors.Is(err, destination.ErrSignature) {
			t.Errorf("%s: VerifyRequest = %v; want an error wrapping ErrSignature", name, err)
		}
	}
	// Signed but not a record: a decode error, not a signature one.
	junk := []byte("not json")
	if _, err := destination.VerifyRequest(req(junk, destination.Sign(secret, now, junk)), secret, 0); !errors.Is(err, destination.ErrBadRecord) || errors.Is(err, destination.ErrSignature) {
		t.Errorf("VerifyRequest of a signed non-record = %v; want ErrBadRecord", err)
	}
}

func TestVerifyRequestBodyLimit(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte{'a'}, 16<<20+1)
	r := httptest.NewRequest(http.MethodPost, "/hook", bytes.NewReader(big))
	r.Header.Set(destination.HeaderSignature, destination.Sign(secret, time.Now(), big))
	if _, err := destination.VerifyRequest(r, secret, 0); !errors.Is(err, destination.ErrBadRecord) || errors.Is(err, destination.ErrSignature) {
		t.Errorf("VerifyRequest of a body over 16 MiB = %v; want ErrBadRecord", err)
	}
}

// Sign's value has the documented shape: t=<unix seconds>,v1=<64 hex>.
func TestSignFormat(t *testing.T) {
	t.Parallel()
	h := destination.Sign(secret, time.Unix(1_790_000_000, 999_999_999), []byte("x"))
	ts, sig, ok := strings.Cut(h, ",")
	if !ok || ts != "t=1790000000" || !strings.HasPrefix(sig, "v1=") || len(sig) != 3+64 || strings.ToLower(sig) != sig {
		t.Errorf("Sign = %q; want t=1790000000,v1=<64 lowercase hex>", h)
	}
}

// A receiver whose secret is empty or short (an unset variable) refuses
// every record, even one signed with that same secret.
func TestVerifyRefusesShortSecret(t *testing.T) {
	t.Parallel()
	body := []byte(`{"version":"1.0","requestContext":{"requestId":"x","condition":"Success"}}`)
	now := time.Now()
	for _, key := range [][]byte{nil, {}, []byte("fifteen-bytes!!")} {
		if err := destination.Verify(key, destination.Sign(key, now, body), body, 0, now); !errors.Is(err, destination.ErrSignature) {
			t.Errorf("Verify with a %d-byte secret = %v; want ErrSignature", len(key), err)
		}
		r := httptest.NewRequest(http.MethodPost, "/hook", bytes.NewReader(body))
		r.Header.Set(destination.HeaderSignature, destination.Sign(key, now, body))
		if _, err := destination.VerifyRequest(r, key, 0); !errors.Is(err, destination.ErrSignature) {
			t.Errorf("VerifyRequest with a %d-byte secret = %v; want ErrSignature", len(key), err)
		}
	}
}

// A webhook printed or logged shows its scheme and host only; neither its
// URL's password or token nor its secret. NewWebhook's errors neither.
func TestWebhookKeepsSecretsOutOfText(t *testing.T) {
	t.Parallel()
	const url = "https://user:hunter22@hooks.example.com/services/T0/sEcReTtOkEn"
	w, err := destination.NewWebhook(url, secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	var text, js bytes.Buffer
	slog.New(slog.NewTextHandler(&text, nil)).Info("registered", "onSuccess", w)
	slog.New(slog.NewJSONHandler(&js, nil)).Info("registered", "onSuccess", w)
	outs := []string{text.String(), js.String(), fmt.Sprint(w), fmt.Sprintf("%+v", w), fmt.Sprintf("%#v", w)}
	if _, err := destination.NewWebhook(strings.Replace(url, "https", "htps", 1), secret, nil); err == nil {
		t.Fatal("NewWebhook accepted an htps URL")
	} else {
		outs = append(outs, err.Error())
	}
	for _, out := range outs {
		if strings.Contains(out, "hunter22") || strings.Contains(out, "sEcReTtOkEn") || strings.Contains(out, string(secret)) ||
			strings.Contains(out, fmt.Sprint(secret)) {
			t.Errorf("text leaks the URL's password or token, or the secret: %s", out)
		}
	}
	if got := fmt.Sprint(w); got != "webhook https://hooks.example.com" {
		t.Errorf("webhook prints as %q", got)
	}
}

// NewWebhook copies WebhookOptions.Header: the caller changing its map
// afterwards (while deliveries run) changes nothing sent.
func TestWebhookCopiesHeader(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []string
	rv := newReceiver(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("X-Tenant"))
		mu.Unlock()
	})
	h := http.Header{"X-Tenant": {"a"}}
	w := rv.webhook(t, &destination.WebhookOptions{Header: h})
	var wg sync.WaitGroup
	wg.Go(func() { _ = w.Deliver(context.Background(), destination.Record{}) })
	h.Set("X-Tenant", "b")
	h.Set("X-Other", "c")
	wg.Wait()
	if err := w.Deliver(context.Background(), destination.Record{}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, v := range got {
		if v != "a" {
			t.Errorf("webhook sent X-Tenant %q after the caller changed its map; want the copy's \"a\"", v)
		}
	}
}
