package invoke

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// DefaultReportInterval is how often a running task's logs and progress
// are written to the store at most.
const DefaultReportInterval = 500 * time.Millisecond

// reporter collects what one attempt logs and reports, and writes it at
// most once per interval, so that a handler may report in a hot loop. What
// is still pending when the attempt ends goes with its Finish.
type reporter struct {
	q        queue.Backend
	lease    *queue.Lease
	interval time.Duration
	log      *slog.Logger // for a progress write that failed

	mu       sync.Mutex
	pending  queue.Report
	timer    *time.Timer
	closed   bool
	flushing sync.WaitGroup
}

var _ task.Reporter = (*reporter)(nil)

func (r *reporter) Log(rec task.LogRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	logs := append(r.pending.Logs, rec)
	if over := len(logs) - queue.MaxLogs; over > 0 {
		logs = append(logs[:0], logs[over:]...)
	}
	r.pending.Logs = logs
	r.schedule()
}

func (r *reporter) SetProgress(percent float64, message string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.pending.Progress = &task.Progress{Percent: percent, Message: message, UpdatedAt: time.Now()}
	r.schedule()
}

// schedule arranges a flush; r.mu is held.
func (r *reporter) schedule() {
	if r.timer == nil {
		r.flushing.Add(1)
		r.timer = time.AfterFunc(r.interval, r.flush)
	}
}

func (r *reporter) take() *queue.Report {
	rep := r.pending
	r.pending = queue.Report{}
	return &rep
}

func (r *reporter) flush() {
	defer r.flushing.Done()
	r.mu.Lock()
	r.timer = nil
	rep := r.take()
	r.mu.Unlock()
	if err := r.q.Report(context.Background(), r.lease, rep); err != nil {
		r.log.Warn("offload: writing task progress failed", "id", r.lease.ID, "err", err)
	}
}

// close ends the reporting and returns what is still unwritten, after any
// flush under way has been written.
func (r *reporter) close() *queue.Report {
	r.mu.Lock()
	r.closed = true
	if r.timer != nil && r.timer.Stop() {
		r.flushing.Done()
	}
	r.timer = nil
	rep := r.take()
	r.mu.Unlock()
	r.flushing.Wait()
	return rep
}

// EventKind says what an Event reports.
type EventKind string

const (
	EventEnqueued  EventKind = "enqueued"  // a task was stored
	EventStarted   EventKind = "started"   // an attempt started; Duration is the time since enqueue (or retry)
	EventRetried   EventKind = "retried"   // an attempt failed and another will follow; Duration is the attempt's
	EventFinished  EventKind = "finished"  // a task reached a terminal status; Duration is the last attempt's (a task stopped before its attempt started has no EventStarted)
	EventExpired   EventKind = "expired"   // a task passed MaxAge before it could run
	EventDelivered EventKind = "delivered" // a delivery try ended (Err says if it failed); Duration is the try's
)

// Event is what Options.Observer hears.
type Event struct {
	Kind        EventKind
	Target      string
	TaskID      string
	Status      task.Status
	Attempt     int
	Duration    time.Duration
	Err         string
	Destination string // for EventDelivered: task.OnSuccess or task.OnFailure
}

func (s *Scheduler) observe(e Event) {
	if s.opts.Observer != nil {
		s.opts.Observer(e)
	}
}
