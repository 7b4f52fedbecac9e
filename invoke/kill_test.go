package invoke_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// killChildEnv names the database a re-executed test binary runs a
// scheduler on, to be killed by TestRestartAfterKill.
const killChildEnv = "OFFLOAD_INVOKE_KILL_CHILD_DB"

// runKillChild is the process that dies: it runs a scheduler whose
// handler says "running <id> <attempt>" on stdout and then blocks until
// the process is killed.
func runKillChild(path string) int {
	q, err := queue.Open(path, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s, err := invoke.New(q, &invoke.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	err = s.Register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, _ := task.FromContext(r.Context())
		fmt.Printf("running %s %d\n", a.ID, a.Number)
		<-r.Context().Done()
	}), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := s.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return 1 // never reached: the parent kills this process
}

// A process killed with SIGKILL during an attempt loses nothing: after a
// restart the task runs again, and its attempt count shows both attempts.
func TestRestartAfterKill(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "offload.db")
	q, err := queue.Open(path, queueOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	r, err := q.Enqueue(context.Background(), &queue.Job{Target: "work", Request: getRequest("/slow")})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), killChildEnv+"="+path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	running := false
	for sc := bufio.NewScanner(stdout); !running && sc.Scan(); {
		running = sc.Text() == "running "+r.ID+" 1"
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	if !running {
		t.Fatalf("the child never ran the task (%v); its stderr:\n%s", err, stderr.String())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v; want killed by SIGKILL", err)
	}

	q = testutil.OpenQueueAt(t, path, queueOptions(t))
	tk, err := task.Query(context.Background(), q, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if tk.Status != task.Retrying || tk.Attempts != 1 || !strings.Contains(tk.LastError, "process lost") {
		t.Fatalf("after the restart the task is %s with %d attempts (%q); want Retrying with 1", tk.Status, tk.Attempts, tk.LastError)
	}

	w := watch(q)
	s, err := invoke.New(w, &invoke.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan call, 1)
	err = s.Register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, _ := task.FromContext(r.Context())
		seen <- call{attempt: a, retryCount: r.Header.Get(invoke.HeaderRetryCount)}
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan error)
	go func() { ran <- s.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-ran; err != nil {
			t.Error(err)
		}
	}()
	select {
	case f := <-w.finished:
		if f.id != r.ID || f.status != task.Succeeded || f.err != nil {
			t.Fatalf("finished %+v; want %s Succeeded", f, r.ID)
		}
	case <-ctx.Done():
		t.Fatal("the task did not run again after the restart")
	}
	c := <-seen
	if c.attempt.Number != 2 || c.retryCount != "1" {
		t.Errorf("the handler saw attempt %d, %s %q; want attempt 2, retry count 1", c.attempt.Number, invoke.HeaderRetryCount, c.retryCount)
	}
	tk, err = task.Query(context.Background(), q, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if tk.Status != task.Succeeded || tk.Attempts != 2 {
		t.Errorf("task is %s with %d attempts; want Succeeded with 2", tk.Status, tk.Attempts)
	}
}

// A task whose attempts were lost with their process (a request that
// kills it) is judged against MaxRetries when it is leased again: past
// them it fails without running, so the service does not crash at every
// restart; within them it runs.
func TestLostAttemptsUseUpRetries(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		maxRetries int
		wantRun    bool
	}{{1, false}, {2, true}} {
		path := filepath.Join(t.TempDir(), "offload.db")
		var id string
		// Two attempts, each lost: leased, then the process gone (Open
		// recovers what was Running).
		for range 2 {
			q, err := queue.Open(path, queueOptions(t))
			if err != nil {
				t.Fatal(err)
			}
			if id == "" {
				r, err := q.Enqueue(context.Background(), &queue.Job{Target: "poison", Request: getRequest("/")})
				if err != nil {
					t.Fatal(err)
				}
				id = r.ID
			}
			if res, err := q.Lease(context.Background(), time.Now(), []queue.LeaseRequest{{Target: "poison", Max: 1}}); err != nil || len(res.Leases) != 1 {
				t.Fatalf("Lease = %+v, %v", res, err)
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
		}
		q := testutil.OpenQueueAt(t, path, queueOptions(t))
		finished := make(chan struct{}, 1)
		b := newBundle(t, q, &invoke.Options{Observer: func(e invoke.Event) {
			if e.Kind == invoke.EventFinished {
				finished <- struct{}{}
			}
		}})
		ran := make(chan struct{}, 1)
		b.register("poison", http.HandlerFunc(func(http.ResponseWriter, *http.Request) { ran <- struct{}{} }),
			&invoke.Policy{MaxRetries: c.maxRetries})
		b.start()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			t.Fatal("the task did not finish")
		}
		tk := b.task(id)
		switch {
		case c.wantRun && (len(ran) != 1 || tk.Status != task.Succeeded):
			t.Errorf("MaxRetries %d after 2 lost attempts: ran %v, %s (%q); want it run", c.maxRetries, len(ran) == 1, tk.Status, tk.LastError)
		case !c.wantRun && (len(ran) != 0 || tk.Status != task.Failed ||
			tk.LastError != "process lost during attempt 2 (retries exhausted: 1)"):
			t.Errorf("MaxRetries %d after 2 lost attempts: ran %v, %s (%q); want Failed unrun", c.maxRetries, len(ran) == 1, tk.Status, tk.LastError)
		}
		if err := b.stopRun(); err != nil {
			t.Fatal(err)
		}
	}
}
