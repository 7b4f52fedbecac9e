package destination

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/offload-go/offload/internal/retryafter"
)

// Webhook headers.
const (
	// HeaderSignature carries "t=<unix seconds>,v1=<hex HMAC-SHA256>", the
	// MAC being over "<t>.<body>" with the shared secret.
	HeaderSignature = "X-Offload-Signature"
	HeaderRequestID = "X-Offload-Request-Id"
	HeaderCondition = "X-Offload-Condition"
)

// Defaults for WebhookOptions.
const (
	DefaultWebhookTimeout = 10 * time.Second
	DefaultTolerance      = 5 * time.Minute
	maxVerifyBody         = 16 << 20
	// MinSecret is the shortest secret NewWebhook and Verify accept.
	MinSecret = 16
)

// ErrSignature is wrapped by Verify for a missing, malformed, stale or
// wrong signature: a receiver answers 401.
var ErrSignature = errors.New("destination: bad webhook signature")

// ErrBadRecord is wrapped by VerifyRequest for a body too large to be a
// record, or a signed one that is not a record's JSON: a receiver answers
// 400.
var ErrBadRecord = errors.New("destination: bad webhook record")

// WebhookOptions configures NewWebhook. A nil *WebhookOptions means all defaults.
type WebhookOptions struct {
	// Client sends the POSTs. If nil, a client of its own. Either way,
	// redirects are not followed: a 3xx answer is a failed delivery, so
	// that a signed record never goes anywhere but the URL given.
	Client *http.Client
	// Timeout bounds one delivery. Defaults to DefaultWebhookTimeout.
	Timeout time.Duration
	// Header is added to every POST.
	Header http.Header
}

// Webhook POSTs each record as JSON to a fixed URL, signed with
// HMAC-SHA256 (see HeaderSignature and Verify). Only a 2xx answer counts
// as delivered; any other is tried again, after the answer's Retry-After
// if it has one (a receiver that sheds load with 429 or 503 gets its
// pause). The signature covers the body only: HeaderRequestID and
// HeaderCondition repeat fields of the record for routing, and a receiver
// acts on the verified record (VerifyRequest), not on them.
type Webhook struct {
	url    string
	origin string // scheme and host, for errors: a URL's path may hold a token
	secret []byte
	client *http.Client
	opts   WebhookOptions
}

// NewWebhook returns a webhook destination. The URL must be absolute
// http or https, and the secret at least MinSecret bytes.
func NewWebhook(rawURL string, secret []byte, opts *WebhookOptions) (*Webhook, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// Not the URL itself: it may hold a password or a token.
		return nil, errors.New("destination: webhook URL must be absolute http or https")
	}
	if len(secret) < MinSecret {
		return nil, fmt.Errorf("destination: webhook secret must be at least %d bytes", MinSecret)
	}
	var o WebhookOptions
	if opts != nil {
		o = *opts
	}
	o.Header = o.Header.Clone() // the caller may reuse its map
	if o.Timeout < 0 {
		return nil, errors.New("destination: negative webhook timeout")
	}
	o.Timeout = cmp.Or(o.Timeout, DefaultWebhookTimeout)
	var client http.Client
	if o.Client != nil {
		client = *o.Client
	}
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Webhook{url: rawURL, origin: u.Scheme + "://" + u.Host, secret: bytes.Clone(secret), client: &client, opts: o}, nil
}

// String names the webhook by its URL's scheme and host only: the rest of
// the URL may hold a token, and the secret stays out of logs.
func (w *Webhook) String() string { return "webhook " + w.origin }

// GoString is String, for %#v.
func (w *Webhook) GoString() string { return w.String() }

// LogValue is String, for log/slog.
func (w *Webhook) LogValue() slog.Value { return slog.StringValue(w.String()) }

// Deliver implements Destination.
func (w *Webhook) Deliver(ctx context.Context, rec Record) error {
	body, err := json.Marshal(rec)
	if err != nil {
		return Permanent(err)
	}
	ctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return Permanent(err)
	}
	for k, vs := range w.opts.Header {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "offload-webhook/1")
	req.Header.Set(HeaderRequestID, rec.RequestContext.RequestID)
	req.Header.Set(HeaderCondition, string(rec.RequestContext.Condition))
	req.Header.Set(HeaderSignature, Sign(w.secret, time.Now(), body))
	resp, err := w.client.Do(req)
	if err != nil {
		// The client's error names the whole URL; errors are stored and shown.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("destination: webhook %s: %w", w.origin, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		err := fmt.Errorf("destination: webhook %s answered %s", w.origin, resp.Status)
		if d, ok := retryafter.Parse(resp.Header, time.Now()); ok {
			return RetryAfter(err, d)
		}
		return err
	}
	return nil
}

// Sign returns the HeaderSignature value for body sent at t.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify checks a HeaderSignature value against body: the MAC must match
// (compared in constant time) and its time be within tolerance of now
// (0 means DefaultTolerance). It returns an error wrapping ErrSignature
// otherwise, and for a secret shorter than MinSecret (an unset variable
// would otherwise accept what anyone signed with an empty key).
func Verify(secret []byte, header string, body []byte, tolerance time.Duration, now time.Time) error {
	if len(secret) < MinSecret {
		return fmt.Errorf("%w: the receiver's secret is shorter than %d bytes", ErrSignature, MinSecret)
	}
	tolerance = cmp.Or(tolerance, DefaultTolerance)
	var ts, sig string
	for part := range strings.SplitSeq(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: no timestamp", ErrSignature)
	}
	got, err := hex.DecodeString(sig)
	if err != nil || len(got) != sha256.Size {
		return fmt.Errorf("%w: no v1 signature", ErrSignature)
	}
	if !hmac.Equal(got, mac(secret, ts, body)) {
		return fmt.Errorf("%w: signature does not match", ErrSignature)
	}
	if age := now.Sub(time.Unix(sec, 0)); age > tolerance || age < -tolerance {
		return fmt.Errorf("%w: timestamp outside the %s tolerance", ErrSignature, tolerance)
	}
	return nil
}

// VerifyRequest is Verify for a receiving handler: it reads r's body (at
// most 16 MiB), checks its signature, and decodes the record.
func VerifyRequest(r *http.Request, secret []byte, tolerance time.Duration) (Record, error) {
	var rec Record
	body, err := io.ReadAll(io.LimitReader(r.Body, maxVerifyBody+1))
	if err != nil {
		return rec, fmt.Errorf("destination: read webhook body: %w", err)
	}
	if len(body) > maxVerifyBody {
		return rec, fmt.Errorf("%w: body over %d bytes", ErrBadRecord, maxVerifyBody)
	}
	if err := Verify(secret, r.Header.Get(HeaderSignature), body, tolerance, time.Now()); err != nil {
		return rec, err
	}
	if err := json.Unmarshal(body, &rec); err != nil {
		return rec, fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	return rec, nil
}
