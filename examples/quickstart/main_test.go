package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestQuickstart builds the quickstart, runs it as a newcomer would, makes
// a sync call and an async call that fails once, watches the task through
// the task API until it succeeds on its retry, and stops the server with
// SIGTERM.
func TestQuickstart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "quickstart")
	args := []string{"build", "-o", bin}
	if raceEnabled() {
		args = append(args, "-race")
	}
	t.Logf("go %s .", strings.Join(args, " "))
	if out, err := exec.Command(goTool(t), append(args, ".")...).CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	cmd := exec.Command(bin, "-addr", "127.0.0.1:0", "-db", filepath.Join(dir, "quickstart.db"))
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	// Read stdout line by line until the process exits.
	lines := make(chan string, 1000)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	defer func() {
		for range lines { // wait for the reader: it ends with the process
		}
	}()
	cmd.Stdout = pw
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	err = cmd.Start()
	pw.Close()
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() { // runs first: the process must be gone for the reader to end
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}()

	// The first line says where it listens.
	var first string
	select {
	case first = <-lines:
	case err := <-exited:
		t.Fatalf("quickstart exited: %v\n%s", err, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("no output within 30s")
	}
	_, base, ok := strings.Cut(first, "listening on ")
	if !ok || !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Fatalf("first line %q", first)
	}

	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()

	// A sync call runs the handler now.
	res, err := client.Post(base+"/work?ms=10", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	var done struct {
		Message   string
		Attempt   int
		BodyBytes int
	}
	if body := readAll(t, res); res.StatusCode != http.StatusOK || json.Unmarshal(body, &done) != nil || done.Message != "done" || done.Attempt != 1 || done.BodyBytes != 5 {
		t.Fatalf("sync call: %d %s", res.StatusCode, body)
	}

	// An async call answers 202 at once, and fails its first attempt.
	req, _ := http.NewRequest(http.MethodPost, base+"/work?fail=1&ms=10", nil)
	req.Header.Set("X-Fc-Invocation-Type", "Async")
	res, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	loc := res.Header.Get("Location")
	if res.StatusCode != http.StatusAccepted || !strings.HasPrefix(loc, "/tasks/") {
		t.Fatalf("async call: %d, Location %q, %s", res.StatusCode, loc, body)
	}

	// Poll the task until it succeeds on its second attempt. The server is
	// another process: polling over HTTP is the only way to watch it.
	var tk struct {
		ID                  string
		Status              string
		InvocationCount     int
		AlreadyRetriedTimes int
		Events              []struct{ Status string }
		ReturnPayload       string
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for tk.Status != "Succeeded" {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("task still %s after 30s; stderr:\n%s", tk.Status, stderr.String())
		case err := <-exited:
			t.Fatalf("quickstart exited: %v\n%s", err, stderr.String())
		}
		res, err := client.Get(base + loc)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, res); res.StatusCode != http.StatusOK || json.Unmarshal(body, &tk) != nil {
			t.Fatalf("GET %s: %d %s", loc, res.StatusCode, body)
		}
		if tk.Status == "Failed" || tk.Status == "Expired" || tk.Status == "Invalid" {
			t.Fatalf("task ended %s", tk.Status)
		}
	}
	var seen []string
	for _, e := range tk.Events {
		seen = append(seen, e.Status)
	}
	if tk.InvocationCount != 2 || tk.AlreadyRetriedTimes != 1 || !strings.Contains(strings.Join(seen, " "), "Running Retrying Running Succeeded") {
		t.Errorf("task %+v", tk)
	}
	if !strings.Contains(tk.ReturnPayload, `"attempt":2`) {
		t.Errorf("returnPayload %q", tk.ReturnPayload)
	}

	// SIGTERM shuts it down cleanly.
	client.CloseIdleConnections()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err // for the deferred check
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\nstderr:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30s after SIGTERM; stderr:\n%s", stderr.String())
	}
	if log := stderr.String(); !strings.Contains(log, "shutting down") || strings.Contains(log, "level=ERROR") {
		t.Errorf("stderr:\n%s", log)
	}
	var rest []string
	for l := range lines {
		rest = append(rest, l)
	}
	if out := strings.Join(rest, "\n"); !strings.Contains(out, "curl -s -X POST '"+base+"/work") || !strings.Contains(out, base+"/tasks/") {
		t.Errorf("the printed commands do not use the address:\n%s", out)
	}
}

func readAll(t *testing.T, res *http.Response) []byte {
	t.Helper()
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// raceEnabled reports whether this test runs with the race detector; the
// quickstart is then built with it too.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// goTool finds the go command that runs this test.
func goTool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath(filepath.Join(runtime.GOROOT(), "bin", "go")); err == nil {
		return p
	}
	p, err := exec.LookPath("go")
	if err != nil {
		t.Fatal("no go command: ", err)
	}
	return p
}

// lockedBuffer is the child's stderr, written by exec's copier and read
// by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
