package invoke

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/offload-go/offload/task"
)

// ErrHijack is what a replayed handler gets from Hijack: there is no
// connection behind an async replay.
var ErrHijack = errors.New("invoke: an async replay has no connection to hijack")

// recorder is the ResponseWriter of a replay. It keeps the status, the
// headers and the first limit bytes of the body, and counts the rest.
type recorder struct {
	header      http.Header // the handler's, live
	sent        http.Header // as it was when the status was written, as net/http sends it
	status      int
	wroteHeader bool
	body        []byte
	size        int64
	limit       int
}

func newRecorder(limit int) *recorder {
	return &recorder{header: make(http.Header), limit: limit}
}

func (r *recorder) Header() http.Header { return r.header }

// WriteHeader keeps the first final status, as net/http does; 1xx
// informational answers are not final.
func (r *recorder) WriteHeader(code int) {
	if r.wroteHeader || (code >= 100 && code < 200 && code != http.StatusSwitchingProtocols) {
		return
	}
	r.wroteHeader = true
	r.status = code
	r.sent = r.header.Clone()
}

func (r *recorder) Write(p []byte) (int, error) {
	if !r.wroteHeader {
		r.WriteHeader(http.StatusOK)
	}
	r.size += int64(len(p))
	if room := r.limit - len(r.body); room > 0 {
		r.body = append(r.body, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// Flush commits the status and headers, 200 if none was written, as a
// flush does in net/http: what the handler sets after it no longer counts.
func (r *recorder) Flush() {
	if !r.wroteHeader {
		r.WriteHeader(http.StatusOK)
	}
}

// The other methods http.ResponseController looks for: flushing and
// deadlines succeed, hijacking fails clearly.
func (r *recorder) FlushError() error                            { r.Flush(); return nil }
func (r *recorder) SetReadDeadline(time.Time) error              { return nil }
func (r *recorder) SetWriteDeadline(time.Time) error             { return nil }
func (r *recorder) EnableFullDuplex() error                      { return nil }
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) { return nil, nil, ErrHijack }

func (r *recorder) statusCode() int {
	if !r.wroteHeader {
		return http.StatusOK // a handler that writes nothing answers 200
	}
	return r.status
}

// sentHeader is the header that a client would have received: changes
// after the status was written do not count, as in net/http.
func (r *recorder) sentHeader() http.Header {
	if r.wroteHeader {
		return r.sent
	}
	return r.header
}

func (r *recorder) response() *task.Response {
	return &task.Response{StatusCode: r.statusCode(), Header: r.sentHeader(), Body: r.body, BodySize: r.size}
}
