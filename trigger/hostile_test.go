package trigger_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/trigger"
)

// Limits of the hostile server.
const (
	hostileMaxHeader = 4 << 10
	// hostileReadLimit is how much request line and header net/http reads
	// before it answers 431 itself: MaxHeaderBytes plus its fixed 4096
	// bytes of bufio slop (net/http Server.initialReadLimitSize).
	hostileReadLimit = hostileMaxHeader + 4096
	hostileMaxBody   = 1 << 10
	hostileInline    = 256
)

// spyEnqueuer counts what the middleware asks of the store, so a test can
// tell "rejected before anything was written" from "written, then removed".
type spyEnqueuer struct {
	trigger.Enqueuer
	enqueues, blobs atomic.Int64
}

func (s *spyEnqueuer) Enqueue(ctx context.Context, job *queue.Job) (queue.Receipt, error) {
	s.enqueues.Add(1)
	return s.Enqueuer.Enqueue(ctx, job)
}

func (s *spyEnqueuer) CreateBlob() (queue.Blob, error) {
	s.blobs.Add(1)
	return s.Enqueuer.CreateBlob()
}

// hostileBundle is a bundle (scheduler not running, so nothing executes)
// with small limits, served a second time by a server whose limits a test
// sets, which tests reach over raw TCP.
type hostileBundle struct {
	*testBundle
	spy *spyEnqueuer
	hs  *httptest.Server
}

func hostileSetup(t *testing.T, configure func(*http.Server)) *hostileBundle {
	t.Helper()
	spy := &spyEnqueuer{}
	b := setup(t, setupOpts{
		trigger: &trigger.Options{TaskPath: taskPath, MaxBodyBytes: hostileMaxBody, InlineBodyLimit: hostileInline},
		enqueuer: func(e trigger.Enqueuer) trigger.Enqueuer {
			spy.Enqueuer = e
			return spy
		},
	})
	hs := httptest.NewUnstartedServer(b.srv.Config.Handler)
	hs.Config.MaxHeaderBytes = hostileMaxHeader
	hs.Config.ReadTimeout = 30 * time.Second
	hs.Config.ErrorLog = log.New(io.Discard, "", 0)
	if configure != nil {
		configure(hs.Config)
	}
	hs.Start()
	t.Cleanup(hs.Close)
	return &hostileBundle{testBundle: b, spy: spy, hs: hs}
}

// rawReq is a request written byte for byte, so that it can hold what
// http.Client refuses to send.
type rawReq struct {
	path     string      // defaults to workPath+"alpha"
	header   [][2]string // in order, after Host and Connection
	body     []byte
	chunked  bool // send body in 100-byte chunks
	declared int  // Content-Length to declare, if not len(body)
	// halfClose closes the client's write side after the request, so the
	// server reads EOF where the body falls short.
	halfClose bool
	// rawChunks, if set, is written as the chunked body verbatim.
	rawChunks string
}

func (r rawReq) bytes() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: offload.test\r\nConnection: close\r\n", cmpOr(r.path, workPath+"alpha"))
	for _, h := range r.header {
		b.WriteString(h[0] + ": " + h[1] + "\r\n")
	}
	switch {
	case r.chunked || r.rawChunks != "":
		b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		if r.rawChunks != "" {
			b.WriteString(r.rawChunks)
			break
		}
		for body := r.body; len(body) > 0; {
			n := min(len(body), 100)
			fmt.Fprintf(&b, "%x\r\n%s\r\n", n, body[:n])
			body = body[n:]
		}
		b.WriteString("0\r\n\r\n")
	default:
		n := len(r.body)
		if r.declared > 0 {
			n = r.declared
		}
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", n)
		b.Write(r.body)
	}
	return b.Bytes()
}

// headLen is the length of the request line and header of raw.
func headLen(raw []byte) int { return bytes.Index(raw, []byte("\r\n\r\n")) + 4 }

// padded returns r with an X-Pad header that makes its request line and
// header exactly total bytes long.
func padded(r rawReq, total int) rawReq {
	r.header = append(slices.Clone(r.header), [2]string{"X-Pad", ""})
	n := total - headLen(r.bytes())
	if n < 0 {
		panic("padded: the request is already longer than the total")
	}
	r.header[len(r.header)-1][1] = strings.Repeat("p", n)
	return r
}

// sendRaw writes raw to addr and reads the answer. It writes while it
// reads, so an answer sent before the request is all read (a 431) is seen.
func sendRaw(t *testing.T, addr string, raw []byte, halfClose bool) *result {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second)) // a bound, not a wait
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		if _, err := conn.Write(raw); err == nil && halfClose {
			_ = conn.(*net.TCPConn).CloseWrite()
		}
	}()
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		conn.Close()
		<-wrote
		t.Fatalf("no answer: %v", err)
	}
	got := readResult(t, res)
	conn.Close()
	<-wrote
	return got
}

// checkNothingStored fails unless the store holds no task and no blob
// file, and nothing but the database and its blob directory sits beside
// the database.
func (hb *hostileBundle) checkNothingStored(t *testing.T) {
	t.Helper()
	if tasks := hb.stored(t); len(tasks) != 0 {
		t.Errorf("%d tasks stored, first %q", len(tasks), tasks[0].ID)
	}
	if n := hb.spy.enqueues.Load(); n != 0 {
		t.Errorf("Enqueue called %d times", n)
	}
	if blobs := hb.blobs(t); len(blobs) != 0 {
		t.Errorf("blob files left: %v", blobs)
	}
	hb.checkDBDir(t)
}

// checkDBDir fails if any file but the database and its blob directory
// sits beside the database: a caller's ID must never have named one.
func (hb *hostileBundle) checkDBDir(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Dir(hb.q.Path()))
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Base(hb.q.Path())
	for _, e := range entries {
		if e.Name() != base && e.Name() != base+".blobs" {
			t.Errorf("unexpected file beside the database: %s", e.Name())
		}
	}
}

type hostileCase struct {
	name string
	req  rawReq
	// status is the expected answer. code is its JSON error code; ""
	// for a 2xx, or where net/http answers (in plain text) before the
	// middleware runs.
	status int
	code   string
	// accepted: exactly one task is stored.
	accepted bool
	// blob: the body went to a blob file. For an accepted request the
	// file stays; for a rejected one it was created and must be gone.
	blob bool
}

// TestHostileRequests sends requests that are too big, malformed or
// crafted, over real HTTP, and checks each answer and that nothing but an
// accepted request is stored.
func TestHostileRequests(t *testing.T) {
	t.Parallel()
	async := [2]string{trigger.HeaderInvocationType, "Async"}
	withAsync := func(h ...[2]string) [][2]string { return append([][2]string{async}, h...) }
	id := func(v string) rawReq { return rawReq{header: withAsync([2]string{trigger.HeaderAsyncTaskID, v})} }
	delay := func(v string) rawReq { return rawReq{header: withAsync([2]string{trigger.HeaderAsyncDelay, v})} }
	key := func(v string) rawReq { return rawReq{header: withAsync([2]string{trigger.HeaderIdempotencyKey, v})} }
	typ := func(v string) rawReq { return rawReq{header: [][2]string{{trigger.HeaderInvocationType, v}}} }
	body := func(n int) []byte { return bytes.Repeat([]byte("b"), n) }
	withBody := func(r rawReq, b []byte) rawReq { r.body = b; return r }
	chunked := func(r rawReq, b []byte) rawReq { r.body, r.chunked = b, true; return r }

	tests := []hostileCase{
		// Header sizes: net/http answers 431 before the middleware runs.
		{name: "header of MaxHeaderBytes", req: padded(rawReq{header: withAsync()}, hostileMaxHeader), status: 202, accepted: true},
		{name: "header at the server's read limit", req: padded(rawReq{header: withAsync()}, hostileReadLimit), status: 202, accepted: true},
		{name: "header one byte past the read limit", req: padded(rawReq{header: withAsync()}, hostileReadLimit+1), status: 431},
		{name: "a 64 KiB header line", req: padded(rawReq{header: withAsync()}, 64<<10), status: 431},
		{name: "a 64 KiB task ID", req: id(strings.Repeat("a", 64<<10)), status: 431},

		// Body sizes, declared and chunked.
		{name: "body of MaxBodyBytes", req: withBody(rawReq{header: withAsync()}, body(hostileMaxBody)), status: 202, accepted: true, blob: true},
		{name: "body one byte past MaxBodyBytes", req: withBody(rawReq{header: withAsync()}, body(hostileMaxBody+1)), status: 413, code: trigger.CodeRequestTooLarge},
		{name: "declared huge, nothing sent", req: rawReq{header: withAsync(), declared: 1 << 40}, status: 413, code: trigger.CodeRequestTooLarge},
		{name: "chunked body of MaxBodyBytes", req: chunked(rawReq{header: withAsync()}, body(hostileMaxBody)), status: 202, accepted: true, blob: true},
		{name: "chunked body one byte past MaxBodyBytes", req: chunked(rawReq{header: withAsync()}, body(hostileMaxBody+1)), status: 413, code: trigger.CodeRequestTooLarge, blob: true},
		{name: "chunked body of the inline limit", req: chunked(rawReq{header: withAsync()}, body(hostileInline)), status: 202, accepted: true},
		{name: "body cut short after the inline limit", req: rawReq{header: withAsync(), body: body(hostileInline + 100), declared: hostileMaxBody, halfClose: true},
			status: 400, code: trigger.CodeInvalidArgument, blob: true},
		{name: "malformed chunk after the inline limit", req: rawReq{header: withAsync(), rawChunks: fmt.Sprintf("%x\r\n%s\r\nzz\r\n", hostileInline+50, body(hostileInline+50))},
			status: 400, code: trigger.CodeInvalidArgument, blob: true},
		{name: "two different Content-Lengths", req: rawReq{header: withAsync([2]string{"Content-Length", "3"}), body: body(5)}, status: 400},

		// Task IDs: bytes net/http lets through reach CheckCallerID.
		{name: "ID of invalid UTF-8", req: id("\xff\xfe"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID of a lone continuation byte", req: id("a\x80"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID of non-ASCII UTF-8", req: id("caf\u00e9"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID with a tab", req: id("a\tb"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID with a control character", req: id("a\x01b"), status: 400},
		{name: "ID with NUL", req: id("a\x00b"), status: 400},
		{name: "ID with DEL", req: id("a\x7fb"), status: 400},
		{name: "ID with an escape sequence", req: id("a\x1b[31m"), status: 400},
		{name: "ID of 128 bytes", req: id(strings.Repeat("i", 128)), status: 202, accepted: true},
		{name: "ID of 129 bytes", req: id(strings.Repeat("i", 129)), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "stateful ID of invalid UTF-8", req: rawReq{header: withAsync([2]string{trigger.HeaderStatefulID, "\xc3\x28"})}, status: 400, code: trigger.CodeInvalidTaskID},
		{name: "both ID headers, different", req: rawReq{header: withAsync([2]string{trigger.HeaderAsyncTaskID, "job_a"}, [2]string{trigger.HeaderStatefulID, "job_b"})},
			status: 400, code: trigger.CodeInvalidTaskID},
		{name: "both ID headers, the same", req: rawReq{header: withAsync([2]string{trigger.HeaderAsyncTaskID, "job_a"}, [2]string{trigger.HeaderStatefulID, "job_a"})},
			status: 202, accepted: true},
		{name: "both ID headers, differing in case", req: rawReq{header: withAsync([2]string{trigger.HeaderAsyncTaskID, "job_a"}, [2]string{trigger.HeaderStatefulID, "JOB_A"})},
			status: 400, code: trigger.CodeInvalidTaskID},

		// Delays.
		{name: "delay of the maximum", req: delay("3600"), status: 202, accepted: true},
		{name: "delay past the maximum", req: delay("3601"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "delay of the largest uint32", req: delay("4294967295"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "delay past uint32", req: delay("4294967296"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "delay past uint64", req: delay("18446744073709551616"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "delay of 100 digits", req: delay(strings.Repeat("9", 100)), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "negative delay", req: delay("-1"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "negative zero delay", req: delay("-0"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "signed delay", req: delay("+5"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "fractional delay", req: delay("1.5"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "hex delay", req: delay("0x10"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "exponent delay", req: delay("1e3"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "delay with a unit", req: delay("10s"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "delay in Arabic-Indic digits", req: delay("\u0661\u0660"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "delay in fullwidth digits", req: delay("\uff11\uff10"), status: 400, code: trigger.CodeInvalidAsyncDelay},
		{name: "delay NaN", req: delay("NaN"), status: 400, code: trigger.CodeInvalidAsyncDelay},

		// Caller IDs aimed at files.
		{name: "ID ../../etc/passwd", req: id("../../etc/passwd"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID a/b", req: id("a/b"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID ..", req: id(".."), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID .", req: id("."), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID %2e%2e", req: id("%2e%2e"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID ..%2f..%2fx", req: id("..%2f..%2fx"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID /etc/passwd", req: id("/etc/passwd"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: `ID ..\..\x`, req: id(`..\..\x`), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID in a fullwidth solidus", req: id("a\uff0fb"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID in an overlong slash", req: id("a\xc0\xafb"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID of a blob's name", req: id("0123456789abcdef0123456789abcdef"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "ID ~root", req: id("~root"), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "traversal ID with a body past the inline limit", req: withBody(id("../../x"), body(hostileInline+1)), status: 400, code: trigger.CodeInvalidTaskID},
		{name: "traversal stateful ID with a chunked body past the inline limit",
			req:    chunked(rawReq{header: withAsync([2]string{trigger.HeaderStatefulID, "../blobs/x"})}, body(hostileMaxBody)),
			status: 400, code: trigger.CodeInvalidTaskID},

		// Idempotency keys.
		{name: "key of 255 bytes", req: key(strings.Repeat("k", 255)), status: 202, accepted: true},
		{name: "key of 256 bytes", req: key(strings.Repeat("k", 256)), status: 400, code: trigger.CodeInvalidIdempotencyKey},
		{name: "key of 300 bytes", req: key(strings.Repeat("k", 300)), status: 400, code: trigger.CodeInvalidIdempotencyKey},
		{name: "key with a space", req: key("a b"), status: 400, code: trigger.CodeInvalidIdempotencyKey},
		{name: "key with a tab", req: key("a\tb"), status: 400, code: trigger.CodeInvalidIdempotencyKey},
		{name: "key with a bare LF", req: key("a\nb"), status: 400},
		{name: "key folded over two lines", req: key("a\r\n b"), status: 400, code: trigger.CodeInvalidIdempotencyKey}, // net/http unfolds it to "a b"
		{name: "key with a bare CR", req: key("a\rb"), status: 400},
		{name: "key of non-ASCII", req: key("cl\u00e9"), status: 400, code: trigger.CodeInvalidIdempotencyKey},
		{name: "key of invalid UTF-8", req: key("\xff"), status: 400, code: trigger.CodeInvalidIdempotencyKey},

		// Invocation types that only look like Async or Sync.
		{name: "type ASYNC", req: typ("ASYNC"), status: 202, accepted: true},
		{name: "type with a Cyrillic A", req: typ("\u0410sync"), status: 400, code: trigger.CodeInvalidInvocationType},
		{name: "type with a Cyrillic es", req: typ("Asyn\u0441"), status: 400, code: trigger.CodeInvalidInvocationType},
		{name: "type in fullwidth letters", req: typ("\uff21\uff53\uff59\uff4e\uff43"), status: 400, code: trigger.CodeInvalidInvocationType},
		{name: "type with a zero-width space", req: typ("Async\u200b"), status: 400, code: trigger.CodeInvalidInvocationType},
		{name: "type with a long s", req: typ("A\u017fync"), status: 400, code: trigger.CodeInvalidInvocationType},
		{name: "Sync with a long s", req: typ("\u017fync"), status: 400, code: trigger.CodeInvalidInvocationType},
		{name: "type with a soft hyphen", req: typ("A\u00adsync"), status: 400, code: trigger.CodeInvalidInvocationType},
		{name: "type of invalid UTF-8", req: typ("Async\xff"), status: 400, code: trigger.CodeInvalidInvocationType},
		// A lookalike respond-async preference is not one: the call is sync.
		{name: "Prefer with a long s", req: rawReq{header: [][2]string{{"Prefer", "re\u017fpond-async"}}}, status: http.StatusCreated},
		{name: "Prefer with a Cyrillic o", req: rawReq{header: [][2]string{{"Prefer", "resp\u043end-async"}}}, status: http.StatusCreated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hb := hostileSetup(t, nil)
			res := sendRaw(t, hb.hs.Listener.Addr().String(), tt.req.bytes(), tt.req.halfClose)
			if res.status != tt.status {
				t.Fatalf("status %d %s; want %d", res.status, truncateBody(res.body), tt.status)
			}
			switch {
			case tt.code != "":
				if got := res.code(); got != tt.code || res.header.Get("Content-Type") != "application/json" {
					t.Errorf("answer %s (%s); want code %s", truncateBody(res.body), res.header.Get("Content-Type"), tt.code)
				}
			case tt.status >= 400:
				// net/http answered before the middleware ran.
				if !strings.HasPrefix(res.header.Get("Content-Type"), "text/plain") {
					t.Errorf("answer %s (%s); want net/http's own", truncateBody(res.body), res.header.Get("Content-Type"))
				}
			}
			wantBlobs := int64(0)
			if tt.blob {
				wantBlobs = 1
			}
			if n := hb.spy.blobs.Load(); n != wantBlobs {
				t.Errorf("CreateBlob called %d times; want %d", n, wantBlobs)
			}
			if !tt.accepted {
				hb.checkNothingStored(t)
				return
			}
			tasks := hb.stored(t)
			if len(tasks) != 1 || res.header.Get(trigger.HeaderRequestID) != tasks[0].ID {
				t.Fatalf("%d tasks stored for 202 of %q", len(tasks), res.header.Get(trigger.HeaderRequestID))
			}
			if blobs := hb.blobs(t); int64(len(blobs)) != wantBlobs {
				t.Errorf("%d blob files; want %d", len(blobs), wantBlobs)
			}
			hb.checkDBDir(t)
		})
	}
}

func truncateBody(b []byte) string {
	if len(b) > 200 {
		return fmt.Sprintf("%q...", b[:200])
	}
	return fmt.Sprintf("%q", b)
}

// TestSlowLoris: a client that sends its request slower than the server's
// ReadTimeout loses its connection or gets an error, and leaves nothing
// stored: not a task, not the blob its body had started to fill.
func TestSlowLoris(t *testing.T) {
	t.Parallel()
	const readTimeout = 200 * time.Millisecond
	head := "POST " + workPath + "alpha HTTP/1.1\r\nHost: offload.test\r\n" + trigger.HeaderInvocationType + ": Async\r\n"
	tests := []struct {
		name  string
		start string // sent at once
		drip  string // then one of these every tick
		blob  bool   // the body reaches a blob before the timeout
	}{
		{
			name:  "header",
			start: head + "X-Slow: ",
			drip:  "s",
		},
		{
			name:  "declared body",
			start: head + fmt.Sprintf("Content-Length: %d\r\n\r\n", hostileMaxBody) + strings.Repeat("b", hostileInline+1),
			drip:  "b",
			blob:  true,
		},
		{
			name:  "chunked body",
			start: head + "Transfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x\r\n%s\r\n", hostileInline+1, strings.Repeat("b", hostileInline+1)),
			drip:  "1\r\nb\r\n",
			blob:  true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hb := hostileSetup(t, func(s *http.Server) {
				s.ReadTimeout = readTimeout
				s.ReadHeaderTimeout = readTimeout
			})
			start := time.Now() // before the server can start its clock
			conn, err := net.Dial("tcp", hb.hs.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(30 * time.Second)) // a bound, not a wait

			type answer struct {
				res *result
				err error
			}
			answered := make(chan answer, 1)
			go func() {
				res, err := http.ReadResponse(bufio.NewReader(conn), nil)
				if err != nil {
					answered <- answer{err: err}
					return
				}
				defer res.Body.Close()
				body, err := io.ReadAll(res.Body)
				answered <- answer{&result{status: res.StatusCode, header: res.Header, body: body}, err}
			}()
			if _, err := io.WriteString(conn, tt.start); err != nil {
				t.Fatal(err)
			}
			// The attack itself: one small write per tick, four ticks per
			// ReadTimeout, until the server answers or hangs up.
			tick := time.NewTicker(readTimeout / 4)
			defer tick.Stop()
			var a answer
		drip:
			for {
				select {
				case a = <-answered:
					break drip
				case <-tick.C:
					if _, err := io.WriteString(conn, tt.drip); err != nil {
						a = <-answered
						break drip
					}
				}
			}
			if elapsed := time.Since(start); elapsed < readTimeout {
				t.Errorf("the server gave up after %v, before its ReadTimeout", elapsed)
			}
			switch {
			case a.err != nil && a.res == nil:
				// The connection was closed without an answer.
			case a.res.status == http.StatusAccepted || a.res.status < 400:
				t.Fatalf("a slow client got %d %s", a.res.status, a.res.body)
			case a.res.status == http.StatusBadRequest && a.res.code() != trigger.CodeInvalidArgument:
				t.Errorf("400 %s; want code %s", a.res.body, trigger.CodeInvalidArgument)
			}
			wantBlobs := int64(0)
			if tt.blob {
				wantBlobs = 1
			}
			if n := hb.spy.blobs.Load(); n != wantBlobs {
				t.Errorf("CreateBlob called %d times; want %d", n, wantBlobs)
			}
			hb.checkNothingStored(t)
		})
	}
}

// TestFilesArePrivate: the database is 0600, its blob directory 0700, and
// the blob file of a large upload through the whole stack 0600.
func TestFilesArePrivate(t *testing.T) {
	t.Parallel()
	hb := hostileSetup(t, nil)
	res := sendRaw(t, hb.hs.Listener.Addr().String(), rawReq{
		header: [][2]string{{trigger.HeaderInvocationType, "Async"}},
		body:   bytes.Repeat([]byte("x"), hostileMaxBody),
	}.bytes(), false)
	if res.status != http.StatusAccepted {
		t.Fatalf("upload: %d %s", res.status, res.body)
	}
	blobs := hb.blobs(t)
	if len(blobs) != 1 {
		t.Fatalf("%d blob files; want 1", len(blobs))
	}
	for _, c := range []struct {
		path string
		mode os.FileMode
	}{
		{hb.q.Path(), 0o600},
		{hb.q.Path() + ".blobs", 0o700 | os.ModeDir},
		{hb.blobPath(blobs[0].Name()), 0o600},
	} {
		fi, err := os.Lstat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != c.mode {
			t.Errorf("%s: mode %v; want %v", c.path, fi.Mode(), c.mode)
		}
	}
}

// TestSecretHeadersNeverShown: Authorization, Cookie and
// Proxy-Authorization, however a client spells their names and however
// many values they have, appear in no answer of the task API (get, list,
// counts, stop, retry, errors) nor of the dashboard and the calls it makes.
func TestSecretHeadersNeverShown(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{run: true})
	mux := http.NewServeMux()
	mux.Handle("/", b.srv.Config.Handler)
	mux.Handle("/dashboard/", http.StripPrefix("/dashboard", trigger.Dashboard(taskPath, nil)))
	srv := newTestServer(t, mux)

	secrets := map[string][]string{ // names as the client sends them
		"authorization":       {"Bearer s3cret-bearer"},
		"COOKIE":              {"session=s3cret-cookie-1", "theme=s3cret-cookie-2"},
		"Proxy-Authorization": {"Basic s3cret-proxy"},
	}
	send := func(id string, extra ...string) *result {
		req, err := http.NewRequest(http.MethodPost, srv.URL+workPath+"alpha", strings.NewReader("body"))
		if err != nil {
			t.Fatal(err)
		}
		for k, vs := range secrets {
			req.Header[k] = vs // not canonicalized: sent as spelled
		}
		req.Header.Set(trigger.HeaderInvocationType, "Async")
		req.Header.Set("X-Visible", "shown")
		req.Header.Set(trigger.HeaderAsyncTaskID, id)
		for i := 0; i+1 < len(extra); i += 2 {
			req.Header.Set(extra[i], extra[i+1])
		}
		return b.do(t, req)
	}
	outputs := map[string]*result{}
	outputs["202 of ran"] = send("ran")
	outputs["202 of waiting"] = send("waiting", trigger.HeaderAsyncDelay, "3600", trigger.HeaderIdempotencyKey, "k1")
	outputs["409 of a taken ID"] = send("ran")
	b.nextCall(t)
	b.stopScheduler(t)

	dashReq, err := http.NewRequest(http.MethodGet, srv.URL+"/dashboard/", nil)
	if err != nil {
		t.Fatal(err)
	}
	dash := b.do(t, dashReq)
	outputs["dashboard page"] = dash
	m := regexp.MustCompile(`<meta name="offload-api" content="([^"]+)">`).FindSubmatch(dash.body)
	if m == nil {
		t.Fatalf("the dashboard names no API: %s", dash.body)
	}
	api := string(m[1])
	call := func(method, path string) *result {
		req, err := http.NewRequest(method, srv.URL+api+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		return b.do(t, req)
	}
	since := time.Now().Add(-time.Hour).UTC().Format("2006-01-02T15:04:05.000Z") // as the page's toISOString
	for name, path := range map[string]string{
		"list":                  "?limit=20",
		"list by status":        "?status=Succeeded&limit=50",
		"list by time, oldest":  "?since=" + since + "&order=asc&limit=100",
		"list by target":        "?target=" + target + "&limit=20",
		"list by prefix":        "?prefix=wa&limit=20",
		"counts":                "-/counts",
		"get ran":               "ran",
		"get ran with payload":  "ran?includePayload=true",
		"get waiting":           "waiting",
		"get waiting, payload":  "waiting?includePayload=true",
		"list with payload ask": "?includePayload=true",
	} {
		outputs[name] = call(http.MethodGet, path)
	}
	outputs["stop"] = call(http.MethodPost, "waiting/stop")
	outputs["stop again"] = call(http.MethodPost, "waiting/stop")
	outputs["retry"] = call(http.MethodPost, "waiting/retry")
	outputs["retry again"] = call(http.MethodPost, "waiting/retry")
	outputs["get after retry"] = call(http.MethodGet, "waiting")

	wantStatus := map[string]int{"202 of ran": 202, "202 of waiting": 202, "409 of a taken ID": 409, "stop again": 409, "retry again": 409}
	for name, res := range outputs {
		if want := cmpInt(wantStatus[name], http.StatusOK); res.status != want {
			t.Errorf("%s: status %d %s; want %d", name, res.status, res.body, want)
		}
		var all bytes.Buffer
		all.Write(res.body)
		_ = res.header.Write(&all)
		if bytes.Contains(bytes.ToLower(all.Bytes()), []byte("s3cret")) {
			t.Errorf("%s shows a secret: %s", name, all.Bytes())
		}
	}
	// The headers are there, redacted, beside the ones that are not secret.
	for _, name := range []string{"get ran", "get ran with payload", "get waiting", "list", "stop", "retry"} {
		body := outputs[name].body
		if !bytes.Contains(body, []byte(`"X-Visible":["shown"]`)) {
			t.Errorf("%s hides a header that is not secret: %s", name, body)
		}
		for _, h := range []string{"Authorization", "Cookie", "Proxy-Authorization"} {
			if !bytes.Contains(body, []byte(`"`+h+`":["[redacted]"]`)) {
				t.Errorf("%s: no redacted %s: %s", name, h, body)
			}
		}
	}
	// The replayed handler still got them: redaction is of the output only.
	tk := b.query(t, "ran")
	for k, vs := range secrets {
		if got := tk.Request.Header.Values(k); !slices.Equal(got, vs) {
			t.Errorf("stored %s = %q; want %q", k, got, vs)
		}
	}
}

func cmpInt(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}
