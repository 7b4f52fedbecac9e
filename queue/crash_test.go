package queue_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// The crash test runs a child process (this test binary, running only
// TestCrashChild) that writes to a queue from several goroutines and prints
// a line for each write as soon as the call that made it durable returns:
//
//	E <id>            Enqueue acknowledged
//	L <id> <attempt>  Lease acknowledged: the task is Running
//	P <id>            Stop acknowledged: the queued task is Stopped
//
// The parent kills it with SIGKILL after a random number of acknowledgements,
// reopens the database and checks that everything acknowledged is there,
// that recovery made every lost attempt ready again with the attempt
// counted, and that no index disagrees with a record. Every round reuses
// the same file, so each recovery also starts from a recovered database.

const (
	crashRounds = 6
	crashTarget = "crash"
	sideTarget  = "side"
	childOpsCap = 200_000 // a child never runs away, even if no one kills it
)

// TestCrashChild is the child process of TestCrash. Run normally, it does
// nothing.
func TestCrashChild(t *testing.T) {
	mode := os.Getenv(envCrashChild)
	if mode == "" {
		return
	}
	crashChild(mode, os.Getenv(envCrashDB), os.Getenv(envCrashRound))
}

func crashChild(mode, path, round string) {
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		// One write per line, so a kill never leaves half of one.
		fmt.Fprintf(os.Stdout, format+"\n", args...)
	}
	q, err := queue.Open(path, &queue.Options{Logger: discard})
	if err != nil {
		say("error: %v", err)
		return
	}
	defer q.Close()

	var wg sync.WaitGroup
	enqueuer := func(w int) {
		for i := range childOpsCap {
			job := &queue.Job{Target: crashTarget, Request: request([]byte(fmt.Sprintf("round %s worker %d op %d", round, w, i)))}
			if i%4 == 1 {
				job.ID = fmt.Sprintf("r%s_w%d_%d", round, w, i)
			}
			if i%10 == 3 { // a blob body, made durable before the record
				b, err := q.CreateBlob()
				if err != nil {
					say("error: %v", err)
					return
				}
				body := bytes.Repeat([]byte{byte(i)}, 4096)
				if _, err := b.Write(body); err != nil {
					say("error: %v", err)
					return
				}
				if err := b.Close(); err != nil {
					say("error: %v", err)
					return
				}
				job.Request.Body, job.Request.Blob, job.Request.BodySize = nil, b.Name(), int64(len(body))
			}
			r, err := q.Enqueue(ctx, job)
			if err != nil {
				say("error: %v", err)
				return
			}
			say("E %s", r.ID)
		}
	}
	workers := 6
	if mode == "lease" {
		workers = 3
	}
	for w := range workers {
		wg.Go(func() { enqueuer(w) })
	}
	if mode == "lease" {
		ready := make(chan struct{}, 1)
		defer q.Subscribe(func(n queue.Notice) {
			if n.Kind == queue.TaskReady {
				select {
				case ready <- struct{}{}:
				default:
				}
			}
		})()
		wg.Go(func() { leaser(q, ready, say) })
		wg.Go(func() {
			for i := range childOpsCap {
				r, err := q.Enqueue(ctx, &queue.Job{Target: sideTarget, Request: request(nil), ReadyAt: time.Now().Add(time.Hour)})
				if err != nil {
					say("error: %v", err)
					return
				}
				say("E %s", r.ID)
				if i%2 == 0 {
					if _, err := task.Stop(ctx, q, r.ID); err != nil {
						say("error: %v", err)
						return
					}
					say("P %s", r.ID)
				}
			}
		})
	}
	wg.Wait()
}

// leaser leases ready tasks. It reports half of them and keeps them
// Running until the kill; the other half it finishes at once in a random
// way, unreported, so that the file sees every kind of write.
func leaser(q *queue.Queue, ready <-chan struct{}, say func(string, ...any)) {
	for range childOpsCap {
		res, err := q.Lease(ctx, time.Now(), []queue.LeaseRequest{{Target: crashTarget, Max: 4}})
		if err != nil {
			say("error: %v", err)
			return
		}
		if len(res.Leases) == 0 {
			<-ready // the enqueuers never stop, so a notice comes
			continue
		}
		for _, l := range res.Leases {
			if rand.IntN(2) == 0 {
				say("L %s %d", l.ID, l.Attempt)
				continue
			}
			o := queue.Outcome{Status: []task.Status{task.Succeeded, task.Failed, task.Retrying, task.Enqueued}[rand.IntN(4)]}
			if _, err := q.Finish(ctx, l, o); err != nil {
				say("error: %v", err)
				return
			}
		}
	}
}

func TestCrash(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"enqueue", "lease"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "crash.db")
			total := 0
			for round := range crashRounds {
				total += crashRound(t, mode, path, round)
			}
			t.Logf("%d acknowledged writes survived %d kills", total, crashRounds)
		})
	}
}

// crashRound runs one child, kills it and checks the database. It returns
// how many acknowledged writes it checked.
func crashRound(t *testing.T, mode, path string, round int) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
	cmd.Env = append(os.Environ(), envCrashChild+"="+mode, envCrashDB+"="+path, envCrashRound+"="+strconv.Itoa(round))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	t.Cleanup(func() {
		if !waited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})

	// Kill after a random number of the acknowledgements that matter.
	killAfter, counted := 1+rand.IntN(300), "E"
	if mode == "lease" {
		killAfter, counted = 1+rand.IntN(40), "L"
	}
	var (
		enqueued []string
		stopped  []string
		leased   = map[string]int{}
		acks     int
		killed   bool
	)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "E":
			enqueued = append(enqueued, f[1])
		case len(f) == 2 && f[0] == "P":
			stopped = append(stopped, f[1])
		case len(f) == 3 && f[0] == "L":
			n, err := strconv.Atoi(f[2])
			if err != nil {
				t.Fatalf("child said %q", sc.Text())
			}
			leased[f[1]] = n
		default:
			t.Fatalf("child said %q; stderr: %s", sc.Text(), stderr.String())
		}
		if f[0] == counted {
			acks++
		}
		if acks >= killAfter && !killed {
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = true
			// Lines already written are acknowledged too: read on to EOF.
		}
	}
	err = cmd.Wait()
	waited = true
	if !killed {
		t.Fatalf("round %d: child ended before the kill: %v; stderr: %s", round, err, stderr.String())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Success() {
		t.Fatalf("round %d: child after SIGKILL: %v", round, err)
	}

	start := time.Now()
	q, err := queue.Open(path, &queue.Options{Logger: discard})
	if err != nil {
		t.Fatalf("round %d: reopen after kill: %v", round, err)
	}
	defer q.Close()
	t.Logf("round %d: %d enqueued, %d leased, %d stopped acknowledged; reopened in %v",
		round, len(enqueued), len(leased), len(stopped), time.Since(start))
	for _, id := range enqueued {
		if _, err := task.Query(ctx, q, id); err != nil {
			t.Errorf("round %d: acknowledged task %s: %v", round, id, err)
		}
	}
	for _, id := range stopped {
		if tk, err := task.Query(ctx, q, id); err != nil || tk.Status != task.Stopped {
			t.Errorf("round %d: stopped task %s: %v, %v", round, id, tk, err)
		}
	}
	for id, attempt := range leased {
		tk, err := task.Query(ctx, q, id)
		if err != nil {
			t.Errorf("round %d: leased task %s: %v", round, id, err)
			continue
		}
		if tk.Status != task.Retrying || tk.Attempts != attempt || tk.ReadyAt.IsZero() {
			t.Errorf("round %d: task %s was Running attempt %d at the kill; after restart it is %s with %d attempts",
				round, id, attempt, tk.Status, tk.Attempts)
		}
	}
	page, err := task.List(ctx, q, task.Filter{Statuses: []task.Status{task.Running, task.Stopping}})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Tasks) != 0 {
		t.Errorf("round %d: %d tasks still Running or Stopping after recovery", round, len(page.Tasks))
	}
	if err := q.Check(); err != nil {
		t.Errorf("round %d: %v", round, err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	return len(enqueued) + len(leased) + len(stopped)
}
