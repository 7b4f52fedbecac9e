package chaos_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/queue"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) == "1" {
		serveChild()
	}
	os.Exit(m.Run())
}

// recorder is the parent's view of what the children did: which tasks
// ran, how often, and which results were delivered.
type recorder struct {
	mu        sync.Mutex
	executed  map[string]int
	delivered map[string]int
	changed   chan struct{}
}

func newRecorder(t *testing.T) (*recorder, string) {
	rec := &recorder{executed: map[string]int{}, delivered: map[string]int{}, changed: make(chan struct{}, 1)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /executed", func(w http.ResponseWriter, r *http.Request) {
		rec.add(rec.executed, r.URL.Query().Get("id"))
	})
	mux.HandleFunc("POST /delivered", func(w http.ResponseWriter, r *http.Request) {
		d, err := destination.VerifyRequest(r, webhookSecret, 0)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			t.Errorf("delivery: %v", err)
			return
		}
		if d.RequestContext.Condition != destination.Success {
			t.Errorf("delivery of %s: condition %s", d.RequestContext.RequestID, d.RequestContext.Condition)
		}
		rec.add(rec.delivered, d.RequestContext.RequestID)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return rec, srv.URL
}

func (r *recorder) add(m map[string]int, id string) {
	r.mu.Lock()
	m[id]++
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// missing returns the accepted IDs not yet executed or not yet delivered.
func (r *recorder) missing(accepted []string) (notRun, notDelivered []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range accepted {
		if r.executed[id] == 0 {
			notRun = append(notRun, id)
		}
		if r.delivered[id] == 0 {
			notDelivered = append(notDelivered, id)
		}
	}
	return notRun, notDelivered
}

// waitAll waits until every accepted request ran and was delivered, or
// the bound passes.
func (r *recorder) waitAll(t *testing.T, accepted []string, bound time.Duration) {
	t.Helper()
	deadline := time.NewTimer(bound)
	defer deadline.Stop()
	for {
		notRun, notDelivered := r.missing(accepted)
		if len(notRun) == 0 && len(notDelivered) == 0 {
			return
		}
		select {
		case <-r.changed:
		case <-deadline.C:
			t.Fatalf("after %s: %d accepted requests never ran (%.5q), %d never delivered (%.5q)",
				bound, len(notRun), notRun, len(notDelivered), notDelivered)
		}
	}
}

// child is one run of the server.
type child struct {
	cmd    *exec.Cmd
	lines  <-chan string
	exited chan error
}

func startChild(t *testing.T, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{envChild + "=1"}, env...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: readLines(out), exited: make(chan error, 1)}
	go func() { c.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.exited
	})
	c.waitLine(t, "ready")
	return c
}

func (c *child) waitLine(t *testing.T, want string) {
	t.Helper()
	bound := time.NewTimer(30 * time.Second)
	defer bound.Stop()
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				t.Fatalf("child exited before printing %q", want)
			}
			if line == want {
				return
			}
		case <-bound.C:
			t.Fatalf("child did not print %q within 30s", want)
		}
	}
}

func (c *child) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.exited <- <-c.exited // keep it for the cleanup
}

// terminate sends SIGTERM and checks a clean exit.
func (c *child) terminate(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-c.exited; err != nil {
		t.Fatalf("child exit after SIGTERM: %v", err)
	}
	c.exited <- nil // for the cleanup
}

// load is a set of clients sending async requests until stopped.
type load struct {
	url      string
	client   *http.Client
	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	accepted []string
	times    []time.Time // when each was accepted
	codes    map[int]int
	bad      []string // answers outside the contract
	onAccept chan struct{}
}

func startLoad(t *testing.T, addr string, clients int) *load {
	l := &load{
		url:      "http://" + addr + "/work",
		client:   &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}},
		stop:     make(chan struct{}),
		codes:    map[int]int{},
		onAccept: make(chan struct{}, 1),
	}
	for range clients {
		l.wg.Add(1)
		go l.run()
	}
	t.Cleanup(l.halt)
	return l
}

func (l *load) run() {
	defer l.wg.Done()
	body := bytes.Repeat([]byte("x"), 512)
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		req, _ := http.NewRequest(http.MethodPost, l.url, bytes.NewReader(body))
		req.Header.Set("X-Fc-Invocation-Type", "Async")
		resp, err := l.client.Do(req)
		if err != nil {
			// The server is down or restarting: nothing was accepted.
			select {
			case <-l.stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			continue
		}
		l.record(resp)
	}
}

func (l *load) record(resp *http.Response) {
	defer resp.Body.Close()
	var body struct {
		ID   string `json:"id"`
		Code string `json:"code"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.codes[resp.StatusCode]++
	switch {
	case resp.StatusCode == http.StatusAccepted && body.ID != "":
		l.accepted = append(l.accepted, body.ID)
		l.times = append(l.times, time.Now())
		select {
		case l.onAccept <- struct{}{}:
		default:
		}
	case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
	default:
		l.bad = append(l.bad, fmt.Sprintf("%d %s", resp.StatusCode, body.Code))
	}
}

func (l *load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

func (l *load) snapshot() (accepted []string, firstAfter func(time.Time) (time.Time, bool)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	accepted = slices.Clone(l.accepted)
	times := slices.Clone(l.times)
	return accepted, func(t0 time.Time) (time.Time, bool) {
		for _, at := range times {
			if !at.Before(t0) {
				return at, true
			}
		}
		return time.Time{}, false
	}
}

func (l *load) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.accepted)
}

// waitAccepted waits until n more requests than before were accepted.
func (l *load) waitAccepted(t *testing.T, n int) {
	t.Helper()
	target := l.count() + n
	bound := time.NewTimer(60 * time.Second)
	defer bound.Stop()
	for l.count() < target {
		select {
		case <-l.onAccept:
		case <-bound.C:
			t.Fatalf("only %d of %d requests accepted within 60s", l.count(), target)
		}
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// checkDB reopens the queue after the child has exited and runs the index
// checker.
func checkDB(t *testing.T, path string) {
	t.Helper()
	q, err := queue.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestKillRestart is the chaos test: clients send async requests without
// pause while the server is killed with SIGKILL at random moments and
// restarted. Every request that got a 202 must run at least once and have
// its result delivered.
func TestKillRestart(t *testing.T) {
	const rounds = 10
	rec, callback := newRecorder(t)
	addr, db := freeAddr(t), filepath.Join(t.TempDir(), "chaos.db")
	env := []string{envAddr + "=" + addr, envDB + "=" + db, envCallback + "=" + callback, envWorkMs + "=1"}

	c := startChild(t, env...)
	ld := startLoad(t, addr, 16)
	var recovery time.Duration
	for round := range rounds {
		started := time.Now()
		ld.waitAccepted(t, 20+rand.IntN(200)) // a random moment, counted in acceptances
		if round > 0 {
			_, firstAfter := ld.snapshot()
			if at, ok := firstAfter(started); ok {
				recovery = max(recovery, at.Sub(started))
			}
		}
		c.kill(t)
		c = startChild(t, env...)
	}
	ld.halt()
	accepted, _ := ld.snapshot()
	rec.waitAll(t, accepted, 2*time.Minute)
	c.terminate(t)
	checkDB(t, db)

	rec.mu.Lock()
	executed, duplicated := 0, 0
	for _, n := range rec.executed {
		executed++
		duplicated += n - 1
	}
	rec.mu.Unlock()
	notRun, notDelivered := rec.missing(accepted)
	report := fmt.Sprintf("chaos: %d kills; accepted %d, executed %d, duplicated %d, lost %d (undelivered %d), longest recovery %s",
		rounds, len(accepted), executed, duplicated, len(notRun), len(notDelivered), recovery.Round(time.Millisecond))
	t.Log(report)
	fmt.Println(report)
	if len(notRun)+len(notDelivered) > 0 {
		t.Fatal("accepted requests were lost")
	}
	if len(ld.bad) > 0 {
		t.Errorf("answers outside the contract: %.10q", ld.bad)
	}
}
