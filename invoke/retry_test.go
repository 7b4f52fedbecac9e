package invoke_test

import (
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// lastEvent is the task's latest history entry: its time is when the
// status in it was committed.
func lastEvent(t *testing.T, tk *task.Task) task.Event {
	t.Helper()
	if len(tk.Events) == 0 {
		t.Fatalf("task %s has no events", tk.ID)
	}
	return tk.Events[len(tk.Events)-1]
}

// wantBackoff checks the wait after failure n: BackoffInitial*2^(n-1) with
// the ±50% jitter of cenkalti/backoff's default randomization.
func wantBackoff(t *testing.T, n int, initial, wait time.Duration) {
	t.Helper()
	base := initial << (n - 1)
	if lo, hi := base/2, base+base/2; wait < lo || wait > hi {
		t.Errorf("wait after failure %d is %s; want within [%s, %s]", n, wait, lo, hi)
	}
}

// Each retry class is retried with exponential backoff until MaxRetries is
// used up: exactly 1+MaxRetries attempts, each next ReadyAt within the
// jitter range, each attempt seeing its retry count.
func TestRetryClasses(t *testing.T) {
	t.Parallel()
	const timeout = 5 * time.Second
	tests := []struct {
		name    string
		respond func(w http.ResponseWriter, r *http.Request, n int)
		code    int    // the response's status recorded on the task; 0: cut short before one was written
		wantErr string // in LastError
		cause   error  // context.Cause the handler sees
	}{
		{name: "500", respond: answer(500), code: 500, wantErr: "handler answered 500 Internal Server Error"},
		{name: "502", respond: answer(502), code: 502, wantErr: "handler answered 502 Bad Gateway"},
		{name: "504", respond: answer(504), code: 504, wantErr: "handler answered 504 Gateway Timeout"},
		{name: "408", respond: answer(408), code: 408, wantErr: "handler answered 408 Request Timeout"},
		{name: "425", respond: answer(425), code: 425, wantErr: "handler answered 425 Too Early"},
		{
			name:    "panic",
			respond: func(http.ResponseWriter, *http.Request, int) { panic("boom") },
			code:    500, wantErr: "handler panicked: boom",
		},
		{
			// The common shape of a handler that gives up: it returns when
			// its context ends, answering nothing.
			name:    "timeout",
			respond: func(_ http.ResponseWriter, r *http.Request, _ int) { <-r.Context().Done() },
			wantErr: "attempt timed out after 5s", cause: task.ErrTimeout,
		},
		{
			// The cancellation decides, not what the handler answers.
			name: "timeout answering 200",
			respond: func(w http.ResponseWriter, r *http.Request, _ int) {
				<-r.Context().Done()
				w.Write([]byte("done anyway"))
			},
			code: 200, wantErr: "attempt timed out after 5s", cause: task.ErrTimeout,
		},
		{
			name: "timeout answering 504",
			respond: func(w http.ResponseWriter, r *http.Request, _ int) {
				<-r.Context().Done()
				w.WriteHeader(http.StatusGatewayTimeout)
			},
			code: 504, wantErr: "attempt timed out after 5s", cause: task.ErrTimeout,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				const maxRetries = 3
				b := setup(t, nil)
				p := newProbe(tt.respond)
				b.register("work", p, &invoke.Policy{
					MaxRetries: maxRetries, Timeout: timeout, BackoffInitial: time.Second, BackoffMax: time.Hour,
				})
				b.start()
				id := b.enqueue(&queue.Job{Target: "work"})

				var readyAt time.Time
				for n := 1; n <= 1+maxRetries; n++ {
					c := p.next(t, time.Hour)
					if c.attempt.ID != id || c.attempt.Number != n || c.attempt.Target != "work" {
						t.Fatalf("attempt %d: handler saw %+v", n, c.attempt)
					}
					if want := strconv.Itoa(n - 1); c.retryCount != want {
						t.Errorf("attempt %d: %s = %q; want %q", n, invoke.HeaderRetryCount, c.retryCount, want)
					}
					if want := c.at.Add(timeout); !c.deadline.Equal(want) {
						t.Errorf("attempt %d: context deadline %s; want Timeout after the start, %s", n, c.deadline, want)
					}
					if c.cause != tt.cause {
						t.Errorf("attempt %d: context cause %v; want %v", n, c.cause, tt.cause)
					}
					if n > 1 && !c.at.Equal(readyAt) {
						t.Errorf("attempt %d started at %s; its ReadyAt was %s", n, c.at, readyAt)
					}
					synctest.Wait()
					tk := b.task(id)
					if n == 1+maxRetries {
						break
					}
					if tk.Status != task.Retrying || tk.Attempts != n {
						t.Fatalf("after attempt %d: task is %s with %d attempts (%q); want Retrying", n, tk.Status, tk.Attempts, tk.LastError)
					}
					ev := lastEvent(t, tk)
					wantBackoff(t, n, time.Second, tk.ReadyAt.Sub(ev.Time))
					if !strings.Contains(tk.LastError, tt.wantErr) {
						t.Errorf("after attempt %d: LastError %q; want it to contain %q", n, tk.LastError, tt.wantErr)
					}
					readyAt = tk.ReadyAt
				}
				tk := b.wantStatus(id, task.Failed, 1+maxRetries)
				if !strings.Contains(tk.LastError, tt.wantErr) || !strings.Contains(tk.LastError, "retries exhausted: 3") {
					t.Errorf("LastError %q; want %q and the retries exhausted", tk.LastError, tt.wantErr)
				}
				if tk.Response == nil || tk.Response.StatusCode != tt.code {
					t.Errorf("recorded response %+v; want status %d", tk.Response, tt.code)
				}
				if !tk.ReadyAt.IsZero() {
					t.Errorf("a failed task has ReadyAt %s", tk.ReadyAt)
				}
			})
		})
	}
}

// MaxRetries allows exactly 1+MaxRetries attempts of a failing task;
// NoRetries allows one, and zero means the default of 3.
func TestMaxRetriesBoundary(t *testing.T) {
	t.Parallel()
	tests := []struct {
		maxRetries int
		attempts   int
	}{
		{invoke.NoRetries, 1},
		{0, 1 + invoke.DefaultMaxRetries},
		{1, 2},
		{5, 6},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.maxRetries), func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				b := setup(t, nil)
				p := newProbe(answer(http.StatusInternalServerError))
				b.register("work", p, &invoke.Policy{MaxRetries: tt.maxRetries, BackoffInitial: time.Millisecond})
				b.start()
				id := b.enqueue(&queue.Job{Target: "work"})
				for range tt.attempts {
					p.next(t, time.Hour)
				}
				synctest.Wait()
				b.wantStatus(id, task.Failed, tt.attempts)
				if len(p.calls) != 0 {
					t.Errorf("%d attempts more than 1+MaxRetries", len(p.calls))
				}
			})
		})
	}
}

// A Retry-After header the handler sends sets the next attempt's time, in
// delay-seconds or as an HTTP date, for retried and throttled answers; a
// second at least, so that "0" cannot rerun a task back to back.
func TestRetryAfter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		code  int
		value func(now time.Time) string
		wait  time.Duration // from the failed attempt's end; -1: backoff
	}{
		{"seconds on 500", 500, func(time.Time) string { return "7" }, 7 * time.Second},
		{"seconds on 503", 503, func(time.Time) string { return "120" }, 2 * time.Minute},
		{"zero on 429", 429, func(time.Time) string { return "0" }, time.Second}, // not back to back
		{"date on 503", 503, func(now time.Time) string { return now.Add(90 * time.Second).UTC().Format(http.TimeFormat) }, 90 * time.Second},
		{"date on 502", 502, func(now time.Time) string { return now.Add(time.Hour).UTC().Format(http.TimeFormat) }, time.Hour},
		{"past date", 500, func(now time.Time) string { return now.Add(-time.Hour).UTC().Format(http.TimeFormat) }, time.Second},
		{"malformed", 500, func(time.Time) string { return "soon" }, -1},
		{"negative", 429, func(time.Time) string { return "-5" }, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				b := setup(t, nil)
				p := newProbe(func(w http.ResponseWriter, _ *http.Request, n int) {
					if n > 1 {
						return // 200
					}
					w.Header().Set("Retry-After", tt.value(time.Now()))
					w.WriteHeader(tt.code)
				})
				b.register("work", p, &invoke.Policy{BackoffInitial: 10 * time.Second, BackoffMax: time.Hour})
				b.start()
				id := b.enqueue(&queue.Job{Target: "work"})
				first := p.next(t, time.Hour)
				if tt.wait != 0 {
					synctest.Wait()
					tk := b.wantStatus(id, task.Retrying, 1)
					// The fake clock stands still while the attempt is
					// answered and finished: the handler's now is the
					// finish's.
					wait := tk.ReadyAt.Sub(first.at)
					if tt.wait < 0 {
						wantBackoff(t, 1, 10*time.Second, wait)
					} else if wait != tt.wait {
						t.Errorf("ReadyAt %s after the failed attempt; want %s", wait, tt.wait)
					}
				}
				second := p.next(t, 2*time.Hour)
				gap := second.at.Sub(first.at)
				if tt.wait < 0 {
					wantBackoff(t, 1, 10*time.Second, gap)
				} else if gap != tt.wait {
					t.Errorf("second attempt %s after the first; want %s", gap, tt.wait)
				}
				synctest.Wait()
				b.wantStatus(id, task.Succeeded, 2)
			})
		})
	}
}

// 429 and 503 do not use up MaxRetries: a task throttled many times still
// succeeds, and throttles do not count among the failures that do.
func TestThrottleDoesNotUseRetries(t *testing.T) {
	t.Parallel()
	t.Run("many throttles then success", func(t *testing.T) {
		t.Parallel()
		for _, code := range []int{http.StatusTooManyRequests, http.StatusServiceUnavailable} {
			synctest.Test(t, func(t *testing.T) {
				b := setup(t, nil)
				p := newProbe(func(w http.ResponseWriter, _ *http.Request, n int) {
					if n <= 5 {
						w.Header().Set("Retry-After", "2")
						w.WriteHeader(code)
					}
				})
				b.register("work", p, &invoke.Policy{MaxRetries: 1})
				b.start()
				id := b.enqueue(&queue.Job{Target: "work"})
				prev := p.next(t, time.Hour)
				for n := 2; n <= 6; n++ {
					c := p.next(t, time.Hour)
					if gap := c.at.Sub(prev.at); gap != 2*time.Second {
						t.Errorf("%d: attempt %d came %s after the previous; want Retry-After's 2s", code, n, gap)
					}
					prev = c
				}
				synctest.Wait()
				b.wantStatus(id, task.Succeeded, 6)
			})
		}
	})
	t.Run("throttles between failures", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			b := setup(t, nil)
			codes := []int{429, 500, 503, 500}
			p := newProbe(func(w http.ResponseWriter, _ *http.Request, n int) { w.WriteHeader(codes[n-1]) })
			b.register("work", p, &invoke.Policy{MaxRetries: 1, BackoffInitial: time.Second})
			b.start()
			id := b.enqueue(&queue.Job{Target: "work"})
			for n := 1; n <= 3; n++ {
				p.next(t, time.Hour)
				synctest.Wait()
				b.wantStatus(id, task.Retrying, n)
			}
			// The second 500 is the second failure: MaxRetries 1 is used up.
			p.next(t, time.Hour)
			synctest.Wait()
			tk := b.wantStatus(id, task.Failed, 4)
			if !strings.Contains(tk.LastError, "retries exhausted: 1") {
				t.Errorf("LastError %q", tk.LastError)
			}
		})
	})
}

// Throttled answers are bounded by MaxAge: a task answered 429 forever
// expires when its next attempt would start past MaxAge.
func TestThrottleBoundedByMaxAge(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		p := newProbe(func(w http.ResponseWriter, _ *http.Request, _ int) {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		})
		b.register("work", p, &invoke.Policy{MaxRetries: invoke.NoRetries, MaxAge: 10 * time.Second})
		b.start()
		id := b.enqueue(&queue.Job{Target: "work"})
		// Attempts at 0s, 1s, ... 10s: the one at 10s would be followed
		// at 11s, past MaxAge.
		for range 11 {
			p.next(t, time.Hour)
		}
		synctest.Wait()
		tk := b.wantStatus(id, task.Expired, 11)
		if !strings.Contains(tk.LastError, "MaxAge") {
			t.Errorf("LastError %q; want it to name MaxAge", tk.LastError)
		}
		if len(p.calls) != 0 {
			t.Errorf("%d attempts after expiry", len(p.calls))
		}
	})
}

// MaxAge is counted from acceptance: a retry that would start exactly at
// MaxAge still happens; one that would start later expires the task.
func TestMaxAgeBoundary(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		p := newProbe(func(w http.ResponseWriter, _ *http.Request, n int) {
			w.Header().Set("Retry-After", map[int]string{1: "10", 2: "1"}[n])
			w.WriteHeader(http.StatusInternalServerError)
		})
		b.register("work", p, &invoke.Policy{MaxAge: 10 * time.Second})
		b.start()
		id := b.enqueue(&queue.Job{Target: "work"})
		created := b.task(id).CreatedAt
		p.next(t, time.Hour)
		synctest.Wait()
		tk := b.wantStatus(id, task.Retrying, 1)
		if got := tk.ReadyAt.Sub(created); got != 10*time.Second {
			t.Fatalf("retry at %s after acceptance; want 10s", got)
		}
		p.next(t, time.Hour)
		synctest.Wait()
		tk = b.wantStatus(id, task.Expired, 2)
		if !strings.Contains(tk.LastError, "MaxAge 10s") {
			t.Errorf("LastError %q; want it to name MaxAge", tk.LastError)
		}
	})
}

// A task that waits past MaxAge before its first attempt expires without
// running.
func TestMaxAgeBeforeFirstAttempt(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		p := newProbe(answer(http.StatusOK))
		b.register("work", p, &invoke.Policy{MaxAge: time.Hour})
		b.start()
		late := b.enqueue(&queue.Job{Target: "work", ReadyAt: time.Now().Add(2 * time.Hour)})
		onTime := b.enqueue(&queue.Job{Target: "work", ReadyAt: time.Now().Add(time.Hour)})
		advance(time.Hour)
		b.wantStatus(onTime, task.Succeeded, 1)
		b.wantStatus(late, task.Enqueued, 0)
		advance(time.Hour)
		tk := b.wantStatus(late, task.Expired, 0)
		if !strings.Contains(tk.LastError, "MaxAge") {
			t.Errorf("LastError %q; want it to name MaxAge", tk.LastError)
		}
		if n := len(p.calls); n != 1 {
			t.Errorf("handler ran %d times; want once, for the task on time", n)
		}
	})
}

// Other 4xx answers fail at once, whatever MaxRetries allows; 2xx, 3xx and
// a handler that writes nothing succeed.
func TestClassification(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code   int // 0: the handler writes nothing
		status task.Status
	}{
		{0, task.Succeeded},
		{200, task.Succeeded},
		{201, task.Succeeded},
		{202, task.Succeeded},
		{204, task.Succeeded},
		{301, task.Succeeded},
		{304, task.Succeeded},
		{400, task.Failed},
		{401, task.Failed},
		{403, task.Failed},
		{404, task.Failed},
		{409, task.Failed},
		{410, task.Failed},
		{413, task.Failed},
		{422, task.Failed},
		{451, task.Failed},
	}
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		b.register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if code, _ := strconv.Atoi(r.URL.Query().Get("code")); code != 0 {
				w.WriteHeader(code)
			}
		}), &invoke.Policy{MaxRetries: 5})
		b.start()
		ids := make([]string, len(tests))
		for i, tt := range tests {
			ids[i] = b.enqueue(&queue.Job{Target: "work", Request: getRequest("/?code=" + strconv.Itoa(tt.code))})
		}
		synctest.Wait()
		for i, tt := range tests {
			tk := b.task(ids[i])
			if tk.Status != tt.status || tk.Attempts != 1 {
				t.Errorf("%d: task is %s after %d attempts; want %s after 1", tt.code, tk.Status, tk.Attempts, tt.status)
			}
			want := max(tt.code, 200)
			if tk.Response == nil || tk.Response.StatusCode != want {
				t.Errorf("%d: recorded response %+v; want status %d", tt.code, tk.Response, want)
			}
			if tt.status == task.Failed && !strings.Contains(tk.LastError, "handler answered "+strconv.Itoa(tt.code)) {
				t.Errorf("%d: LastError %q", tt.code, tk.LastError)
			}
		}
	})
}

// Policy.Classify replaces the default classification.
func TestCustomClassify(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		p := newProbe(func(w http.ResponseWriter, _ *http.Request, n int) {
			w.WriteHeader(map[int]int{1: 404, 2: 200}[n])
		})
		b.register("work", p, &invoke.Policy{
			BackoffInitial: time.Second,
			Classify: func(code int) invoke.Verdict {
				if code == http.StatusNotFound {
					return invoke.Retry // not there yet
				}
				return invoke.DefaultClassify(code)
			},
		})
		b.start()
		id := b.enqueue(&queue.Job{Target: "work"})
		p.next(t, time.Hour)
		p.next(t, time.Hour)
		synctest.Wait()
		b.wantStatus(id, task.Succeeded, 2)
	})
}

// A panicking handler fails its attempt with the panic and its stack
// recorded; the scheduler, and the process, go on.
func TestPanicRecorded(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		b.register("bad", http.HandlerFunc(panickingHandler), &invoke.Policy{MaxRetries: invoke.NoRetries})
		good := newProbe(answer(http.StatusOK))
		b.register("good", good, nil)
		b.start()
		bad := b.enqueue(&queue.Job{Target: "bad"})
		synctest.Wait()
		tk := b.wantStatus(bad, task.Failed, 1)
		for _, want := range []string{"handler panicked: no frobnicator", "goroutine ", "panickingHandler"} {
			if !strings.Contains(tk.LastError, want) {
				t.Errorf("LastError %q\nwant it to contain %q", tk.LastError, want)
			}
		}
		// Later tasks, of this target and others, still run.
		ok := b.enqueue(&queue.Job{Target: "good"})
		again := b.enqueue(&queue.Job{Target: "bad"})
		synctest.Wait()
		b.wantStatus(ok, task.Succeeded, 1)
		b.wantStatus(again, task.Failed, 1)
	})
}

func panickingHandler(w http.ResponseWriter, r *http.Request) {
	w.WriteHeader(http.StatusOK) // a panic fails the attempt whatever was written
	panic("no frobnicator")
}

// A Retry-After too large for a time.Duration is capped, not wrapped
// around into the past (which reran a throttled task at once, again and
// again): the next attempt would pass MaxAge, so the task expires.
func TestRetryAfterBeyondADuration(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		b := setup(t, nil)
		var attempts atomic.Int32
		b.register("work", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if attempts.Add(1) > 1 {
				t.Error("the task ran again at once")
				return // 200 ends it
			}
			w.Header().Set("Retry-After", "10000000000") // 317 years
			w.WriteHeader(http.StatusServiceUnavailable)
		}), nil)
		b.start()
		id := b.enqueue(&queue.Job{Target: "work"})
		synctest.Wait()
		b.wantStatus(id, task.Expired, 1)
	})
}
