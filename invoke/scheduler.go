package invoke

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// DefaultShutdownTimeout is how long Run lets in-flight attempts finish
// after its context is cancelled.
const DefaultShutdownTimeout = 30 * time.Second

// Options configures a Scheduler. A nil *Options means all defaults.
type Options struct {
	// Logger receives the scheduler's events. If nil, slog.Default().
	Logger *slog.Logger
	// ShutdownTimeout is how long Run lets in-flight attempts finish
	// after its context is cancelled before it cancels them and hands them
	// back to the queue. Defaults to DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// ResponseBodyCap is how much of each attempt's response body is kept
	// on the task; the rest is counted and dropped. Defaults to
	// DefaultResponseBodyCap (1 MiB).
	ResponseBodyCap int
	// Capture runs on the original request when it is accepted, and
	// returns the request-scoped values to carry across the async hop (the
	// authenticated user, a tenant, trace headers). If nil, nothing is
	// carried. The values are stored with the request.
	Capture func(r *http.Request) map[string]string
	// Restore runs before each replay with what Capture returned, and
	// returns the context the handler will see. If nil, values are dropped.
	Restore func(ctx context.Context, values map[string]string) context.Context

	// DeliveryTries bounds the tries of one destination delivery; after
	// the last it is recorded failed on the task. Defaults to
	// DefaultDeliveryTries.
	DeliveryTries int
	// DeliveryBackoffInitial and DeliveryBackoffMax shape the backoff
	// between delivery tries. Default to DefaultDeliveryBackoffInitial and
	// DefaultDeliveryBackoffMax.
	DeliveryBackoffInitial time.Duration
	DeliveryBackoffMax     time.Duration
	// ReportInterval is how often, at most, what a running handler logs
	// (task.Logger) and reports (task.SetProgress) is written to the store.
	// Defaults to DefaultReportInterval.
	ReportInterval time.Duration
	// Observer, if not nil, hears of every enqueue, attempt start, retry,
	// finish, expiry and delivery, to feed metrics (Prometheus, expvar,
	// OpenTelemetry) without offload depending on them. It is called
	// synchronously on the scheduler's goroutines and must be quick; it is
	// never called with a lock held, so it may call the Scheduler.
	Observer func(Event)
	// DeliveryConcurrency bounds the deliveries in flight to one
	// destination, so that a slow one cannot hold up the others. Defaults
	// to DefaultDeliveryConcurrency.
	DeliveryConcurrency int
}

// Scheduler replays stored requests into registered targets.
type Scheduler struct {
	q    queue.Backend
	opts Options
	log  *slog.Logger

	wake     chan struct{} // a task may be ready or a slot freed
	dwake    chan struct{} // a delivery may be due or a delivery slot freed
	stopping chan struct{} // closed by Stop: claim no more
	stopped  atomic.Bool   // Stop was called: its context, not ShutdownTimeout, bounds the wait
	hardStop chan struct{} // closed when in-flight attempts must be cancelled
	done     chan struct{} // closed when Run has returned
	stopOnce sync.Once

	mu         sync.Mutex // guards everything below
	targets    map[string]*target
	running    map[string]*attempt
	leasing    int      // Leases in flight: stop notices may name their tasks
	stash      []string // stop notices that arrived while leasing
	readyGen   uint64   // counts TaskReady notices; see leased
	started    bool
	workers    sync.WaitGroup
	sendCtx    context.Context // deliveries' context, cancelled at hard stop
	sendCancel context.CancelCauseFunc
	sending    map[string]bool // deliveries in flight, by key
	perDest    map[string]int  // deliveries in flight per target and destination
	senders    sync.WaitGroup
}

type target struct {
	name     string
	handler  http.Handler
	policy   Policy
	limiter  *rate.Limiter // nil without Policy.RateLimit
	inflight int           // handlers running
	// finishing counts attempts whose handler has returned and whose
	// outcome is being written. They hold no slot, but beyond Concurrency
	// of them the target leases less, so that a store that keeps failing
	// finishes cannot pile up attempts.
	finishing int
	// reserved counts the slots asked for by Leases in flight.
	reserved int
	leases   int // Leases in flight
	// dry is set when a Lease found fewer ready tasks than it asked for:
	// the target is not leased again until a task may be ready (a
	// TaskReady notice) or dryUntil (zero: no known time) has come.
	dry      bool
	dryUntil time.Time
	// failedUntil holds the target back after a failed Lease, whatever
	// notices come meanwhile.
	failedUntil time.Time
	// waiting holds attempts leased ahead of a free slot, in lease order;
	// see ahead.
	waiting []*attempt
	// runTime and leaseTime are moving averages of a handler's run and of a
	// Lease's round trip, zero until measured; see ahead.
	runTime, leaseTime time.Duration
}

// ahead is how many tasks t may lease beyond its free slots: about as many
// as its slots free during one Lease, at most Concurrency. A slot whose
// handler returns sooner than a Lease commits would otherwise sit idle
// while its next task is leased. Targets whose handlers take longer than a
// Lease lease fewer ahead, in proportion, and rate-limited ones none.
func (t *target) ahead() int {
	if t.limiter != nil || t.runTime <= 0 || t.leaseTime <= 0 {
		return 0
	}
	c := float64(t.policy.Concurrency)
	return int(min(c, c*float64(t.leaseTime)/float64(t.runTime)))
}

// maxWait is how long a task leased ahead may wait for a slot before it is
// handed back, for another Lease (or another replica) to take: twice a
// Lease, and at least minWait.
func (t *target) maxWait() time.Duration { return max(2*t.leaseTime, minWait) }

const minWait = 10 * time.Millisecond

// errNoSlot is the cause of a task leased ahead and handed back because no
// slot freed within maxWait.
var errNoSlot = errors.New("invoke: no slot freed for a task leased ahead")

// average folds sample into a moving average that weighs it 1/8.
func average(avg *time.Duration, sample time.Duration) {
	if *avg == 0 {
		*avg = sample
		return
	}
	*avg += (sample - *avg) / 8
}

type attempt struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	lease  *queue.Lease
	since  time.Time // when it began waiting for a slot, if leased ahead
}

// ErrStarted is returned by Register after Run has started, and by a
// second Run.
var ErrStarted = errors.New("invoke: scheduler already started")

// ErrUnknownTarget is wrapped by Enqueue for a target never registered.
var ErrUnknownTarget = errors.New("invoke: unknown target")

// New returns a scheduler over q.
func New(q queue.Backend, opts *Options) (*Scheduler, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.ShutdownTimeout < 0 || o.ResponseBodyCap < 0 || o.DeliveryTries < 0 || o.DeliveryBackoffInitial < 0 ||
		o.DeliveryBackoffMax < 0 || o.DeliveryConcurrency < 0 || o.ReportInterval < 0 {
		return nil, fmt.Errorf("invoke: negative option")
	}
	o.ShutdownTimeout = cmp.Or(o.ShutdownTimeout, DefaultShutdownTimeout)
	o.ResponseBodyCap = cmp.Or(o.ResponseBodyCap, DefaultResponseBodyCap)
	o.DeliveryTries = cmp.Or(o.DeliveryTries, DefaultDeliveryTries)
	o.DeliveryBackoffInitial = cmp.Or(o.DeliveryBackoffInitial, DefaultDeliveryBackoffInitial)
	o.DeliveryBackoffMax = cmp.Or(o.DeliveryBackoffMax, DefaultDeliveryBackoffMax)
	o.DeliveryConcurrency = cmp.Or(o.DeliveryConcurrency, DefaultDeliveryConcurrency)
	o.ReportInterval = cmp.Or(o.ReportInterval, DefaultReportInterval)
	if o.DeliveryBackoffMax < o.DeliveryBackoffInitial {
		return nil, fmt.Errorf("invoke: DeliveryBackoffMax is shorter than DeliveryBackoffInitial")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	sendCtx, sendCancel := context.WithCancelCause(context.Background())
	return &Scheduler{
		sendCtx:    sendCtx,
		sendCancel: sendCancel,
		q:          q,
		opts:       o,
		log:        o.Logger,
		wake:       make(chan struct{}, 1),
		dwake:      make(chan struct{}, 1),
		stopping:   make(chan struct{}),
		hardStop:   make(chan struct{}),
		done:       make(chan struct{}),
		targets:    make(map[string]*target),
		running:    make(map[string]*attempt),
		sending:    make(map[string]bool),
		perDest:    make(map[string]int),
	}, nil
}

// Register makes h the target name, run under policy p (nil for
// defaults). Register every target before Run: at its start Run marks
// Invalid the waiting tasks of targets that are not registered. It returns
// an error for a name already taken, an invalid name or policy, or after
// Run has started.
func (s *Scheduler) Register(name string, h http.Handler, p *Policy) error {
	if err := task.CheckTarget(name); err != nil {
		return fmt.Errorf("invoke: register: %w", err)
	}
	if h == nil {
		return fmt.Errorf("invoke: register %s: nil handler", name)
	}
	pol, err := p.withDefaults()
	if err != nil {
		return fmt.Errorf("invoke: register %s: %w", name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return fmt.Errorf("invoke: register %s: %w", name, ErrStarted)
	}
	if _, ok := s.targets[name]; ok {
		return fmt.Errorf("invoke: register %s: target already registered", name)
	}
	t := &target{name: name, handler: h, policy: pol}
	if pol.RateLimit > 0 {
		t.limiter = rate.NewLimiter(pol.RateLimit, pol.RateBurst)
	}
	s.targets[name] = t
	s.q.SetDestinations(name, pol.OnSuccess != nil, pol.OnFailure != nil)
	return nil
}

// Enqueue stores a job for a registered target, applying its MaxQueued.
// It wraps ErrUnknownTarget for a target never registered, and
// task.ErrClosed once the scheduler is stopping.
func (s *Scheduler) Enqueue(ctx context.Context, job *queue.Job) (queue.Receipt, error) {
	select {
	case <-s.stopping:
		return queue.Receipt{}, fmt.Errorf("invoke: enqueue: %w", task.ErrClosed)
	default:
	}
	s.mu.Lock()
	t, ok := s.targets[job.Target]
	s.mu.Unlock()
	if !ok {
		return queue.Receipt{}, fmt.Errorf("%w: %q", ErrUnknownTarget, job.Target)
	}
	j := *job
	j.MaxQueued = t.policy.MaxQueued
	rc, err := s.q.Enqueue(ctx, &j)
	if err == nil && !rc.Replayed {
		s.observe(Event{Kind: EventEnqueued, Target: j.Target, TaskID: rc.ID, Status: task.Enqueued})
	}
	return rc, err
}

// Admit is a cheap early check that target could take one more task
// now, so that a caller can refuse a request before reading its body. It
// wraps task.ErrQueueFull when the target already has Policy.MaxQueued
// unfinished tasks, ErrUnknownTarget for a target never registered, and
// task.ErrClosed once the scheduler is stopping. Enqueue checks MaxQueued
// again in the transaction that stores the task.
func (s *Scheduler) Admit(ctx context.Context, target string) error {
	select {
	case <-s.stopping:
		return fmt.Errorf("invoke: admit: %w", task.ErrClosed)
	default:
	}
	s.mu.Lock()
	t, ok := s.targets[target]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownTarget, target)
	}
	if t.policy.MaxQueued == 0 {
		return nil
	}
	counts, err := s.q.CountTasks(ctx)
	if err != nil {
		return err
	}
	var live int64
	for _, c := range counts {
		if c.Target == target && !c.Status.Terminal() {
			live += c.N
		}
	}
	if live >= int64(t.policy.MaxQueued) {
		return fmt.Errorf("%w: target %s has %d unfinished tasks", task.ErrQueueFull, target, live)
	}
	return nil
}

// CreateBlob starts a large body in the queue's storage; see queue.Backend.
func (s *Scheduler) CreateBlob() (queue.Blob, error) { return s.q.CreateBlob() }

// Capture returns what Options.Capture keeps of r (nil without a hook).
// The trigger stores it with the request; Restore gets it back on replay.
func (s *Scheduler) Capture(r *http.Request) map[string]string {
	if s.opts.Capture == nil {
		return nil
	}
	return s.opts.Capture(r)
}

// Run claims and runs tasks until ctx is cancelled or Stop is called. Then
// it claims no more, lets in-flight attempts finish (for
// Options.ShutdownTimeout after ctx is cancelled, until Stop's context
// ends after Stop), cancels the rest with cause task.ErrShutdown, hands
// them back to the queue uncounted, and returns. Run may be called once.
func (s *Scheduler) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return ErrStarted
	}
	s.started = true
	known := slices.Collect(maps.Keys(s.targets))
	s.mu.Unlock()
	defer close(s.done)
	defer s.sendCancel(nil)

	unsubscribe := s.q.Subscribe(s.notice)
	defer unsubscribe()
	if n, err := s.q.Invalidate(context.WithoutCancel(ctx), known); err != nil {
		s.log.Error("offload: invalidate tasks of unregistered targets", "err", err)
	} else if n > 0 {
		s.log.Warn("offload: tasks of unregistered targets marked Invalid", "tasks", n)
	}

	deliverDone := make(chan struct{})
	go func() { defer close(deliverDone); s.deliverLoop(ctx) }()
	s.dispatch(ctx)

	// Senders first: claim nothing more; then give in-flight attempts and
	// deliveries their grace period. Undelivered records stay in the
	// outbox for the next run.
	s.stopOnce.Do(func() { close(s.stopping) })
	s.handBackWaiting()
	var graceOver <-chan time.Time // never, after Stop: its context decides
	if !s.stopped.Load() {
		grace := time.NewTimer(s.opts.ShutdownTimeout)
		defer grace.Stop()
		graceOver = grace.C
	}
	drained := make(chan struct{})
	go func() { <-deliverDone; s.workers.Wait(); s.senders.Wait(); close(drained) }()
	select {
	case <-drained:
		return nil
	case <-graceOver:
	case <-s.hardStop:
	}
	s.cancelAll()
	<-drained
	return nil
}

// Stop stops Run: it claims no more tasks and waits for in-flight
// attempts until ctx is done (Options.ShutdownTimeout does not cut it
// short), then cancels them (cause task.ErrShutdown) and waits for them to
// be handed back; a handler that ignores its context's cancellation keeps
// it waiting, since no goroutine of the scheduler outlives Stop. It
// returns ctx.Err() if it had to cancel. Stop is idempotent and safe to
// call before Run, or without it.
func (s *Scheduler) Stop(ctx context.Context) error {
	s.stopped.Store(true)
	s.stopOnce.Do(func() { close(s.stopping) })
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if !started {
		return nil
	}
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
	}
	s.cancelAll()
	<-s.done
	return ctx.Err()
}

func (s *Scheduler) cancelAll() {
	s.mu.Lock()
	select {
	case <-s.hardStop:
	default:
		close(s.hardStop)
	}
	for _, a := range s.running {
		a.cancel(task.ErrShutdown)
	}
	s.sendCancel(task.ErrShutdown)
	s.mu.Unlock()
}

// notice hears from the queue after its commits. It must not block.
func (s *Scheduler) notice(n queue.Notice) {
	switch n.Kind {
	case queue.TaskReady:
		s.mu.Lock()
		s.readyGen++
		for _, t := range s.targets {
			t.dry = false
		}
		s.mu.Unlock()
		s.poke()
	case queue.DeliveryReady:
		select {
		case s.dwake <- struct{}{}:
		default:
		}
	case queue.StopRequested:
		s.mu.Lock()
		a, ok := s.running[n.ID]
		switch {
		case ok && (n.Attempt == 0 || n.Attempt == a.lease.Attempt):
			a.cancel(task.ErrStopped)
			s.endWaiting(a) // if leased ahead, it need not wait for a slot to end
		case !ok && n.Attempt == 0 && s.leasing > 0:
			// A stop of the task, not of an attempt that lost its lease:
			// it may name a task that a Lease in flight returns.
			s.stash = append(s.stash, n.ID)
		}
		s.mu.Unlock()
	}
}

func (s *Scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// dispatch is the claim loop. It sleeps until a task may be ready, a slot
// frees, or the earliest delayed task is due; it never polls.
func (s *Scheduler) dispatch(ctx context.Context) {
	s.loop(ctx, s.wake, s.claim, "leasing")
}

// loop runs step until ctx is done or the scheduler stops, sleeping between
// runs until wake fires or the time step returned (zero: no time) comes. A
// failing step is run again a second later.
func (s *Scheduler) loop(ctx context.Context, wake <-chan struct{}, step func(context.Context) (time.Time, error), what string) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		next, err := step(ctx)
		if err != nil && ctx.Err() == nil {
			s.log.Error("offload: "+what+" failed; retrying in 1s", "err", err)
			next = time.Now().Add(time.Second)
		}
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return
		case <-s.stopping:
			return
		case <-wake:
		case <-timer.C:
		}
	}
}

// claim asks for what the free slots and rate limits allow, without
// waiting: each Lease runs on its own goroutine (see leased), so that slots
// freed while one is being committed are leased in the same commit rather
// than the next. It returns when to look again: the earliest time a dry
// target may have a task, or the next token of a rate-limited one.
func (s *Scheduler) claim(ctx context.Context) (time.Time, error) {
	select {
	case <-s.stopping: // a poke may win the race with stopping in loop
		return time.Time{}, nil
	default:
	}
	now := time.Now()
	var next time.Time
	s.mu.Lock()
	defer s.mu.Unlock()
	var reqs []queue.LeaseRequest
	for _, t := range s.targets {
		next = earliest(next, s.expireWaiting(t, now))
		if now.Before(t.failedUntil) {
			next = earliest(next, t.failedUntil)
			continue
		}
		if t.dry {
			if t.dryUntil.IsZero() || now.Before(t.dryUntil) {
				next = earliest(next, t.dryUntil)
				continue
			}
			t.dry = false
		}
		busy := t.inflight + t.reserved + len(t.waiting)
		free := t.policy.Concurrency + t.ahead() - busy - max(0, t.finishing-t.policy.Concurrency)
		if free <= 0 {
			continue
		}
		if t.limiter != nil {
			if t.leases > 0 {
				continue // its tokens are counted when that Lease returns
			}
			tokens := t.limiter.TokensAt(now)
			if tokens < 1 {
				at := now.Add(time.Duration((1 - tokens) / float64(t.limiter.Limit()) * float64(time.Second)))
				next = earliest(next, at)
				continue
			}
			free = min(free, int(tokens))
		}
		t.reserved += free
		t.leases++
		reqs = append(reqs, queue.LeaseRequest{Target: t.name, Max: free, MaxAge: t.policy.MaxAge})
	}
	if len(reqs) == 0 {
		return next, nil
	}
	s.leasing++
	gen := s.readyGen
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		res, err := s.q.Lease(context.WithoutCancel(ctx), now, reqs)
		s.leased(now, gen, reqs, res, err)
		s.poke()
	}()
	return next, nil
}

// leased starts the attempts a Lease returned and gives back the slots it
// reserved. A target that got fewer tasks than it asked for is marked dry,
// unless a task became ready since the Lease was asked for (gen changed):
// the Lease may have been committed before that task.
func (s *Scheduler) leased(now time.Time, gen uint64, reqs []queue.LeaseRequest, res *queue.LeaseResult, err error) {
	s.mu.Lock()
	s.start(now, gen, reqs, res, err)
	s.mu.Unlock()
	if err != nil {
		return
	}
	// Outside s.mu: an Observer may call back into the scheduler.
	for _, t := range res.Expired {
		s.log.Info("offload: task expired before it ran", "id", t.ID, "target", t.Target)
		s.observe(Event{Kind: EventExpired, Target: t.Target, TaskID: t.ID, Status: task.Expired, Attempt: t.Attempts})
	}
}

// start is leased's work under s.mu.
func (s *Scheduler) start(now time.Time, gen uint64, reqs []queue.LeaseRequest, res *queue.LeaseResult, err error) {
	returned := time.Now()
	s.leasing--
	got := make(map[string]int, len(reqs))
	if err != nil {
		s.log.Error("offload: leasing failed; retrying in 1s", "err", err)
	} else {
		for _, l := range res.Leases {
			t := s.targets[l.Target]
			if t.limiter != nil {
				t.limiter.AllowN(now, 1) // take the token counted by claim
			}
			got[l.Target]++
			a := s.begin(l)
			// A stashed ID names this Lease's task: no other Lease in
			// flight holds it, and a later one must not see it again.
			if i := slices.Index(s.stash, l.ID); i >= 0 {
				s.stash = slices.Delete(s.stash, i, i+1)
				a.cancel(task.ErrStopped)
			}
			if t.inflight < t.policy.Concurrency || a.ctx.Err() != nil {
				s.launch(t, a) // one cancelled already ends at once
			} else {
				a.since = returned // it waits from here, not from the Lease's start
				t.waiting = append(t.waiting, a)
			}
		}
	}
	took := returned.Sub(now)
	for _, r := range reqs {
		t := s.targets[r.Target]
		t.reserved -= r.Max
		t.leases--
		if err == nil {
			average(&t.leaseTime, took)
		}
		switch {
		case err != nil:
			t.failedUntil = time.Now().Add(time.Second)
		case got[r.Target] < r.Max && gen == s.readyGen:
			// res.Next is the earliest over this Lease's targets: at
			// worst an early look.
			t.dry, t.dryUntil = true, res.Next
		}
	}
	if s.leasing == 0 {
		s.stash = nil // what is left names tasks of no Lease
	}
}

// finish records an attempt's outcome. A store that fails (a full disk,
// say) is retried with backoff, the attempt keeping its slot, until the
// write goes through or the scheduler is cancelled; the task is then still
// Running in the store, and the next Open makes it ready again.
func (s *Scheduler) finish(l *queue.Lease, out queue.Outcome) (task.Status, error) {
	for try := 1; ; try++ {
		final, err := s.q.Finish(context.Background(), l, out)
		// A damaged record stays damaged: trying again would only hold
		// Stop for its ShutdownTimeout.
		if err == nil || errors.Is(err, task.ErrLeaseLost) || errors.Is(err, task.ErrClosed) || errors.Is(err, reqcodec.ErrCorrupt) {
			return final, err
		}
		s.log.Warn("offload: recording an attempt failed; trying again", "id", l.ID, "try", try, "err", err)
		wait := time.NewTimer(backoffDelay(finishRetryInitial, finishRetryMax, try))
		select {
		case <-wait.C:
		case <-s.hardStop:
			wait.Stop()
			return final, err
		}
	}
}

// Bounds of the backoff between tries of a failing Finish.
const (
	finishRetryInitial = 100 * time.Millisecond
	finishRetryMax     = 5 * time.Second
)

// earliest returns the earlier of two times, a zero time meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// begin makes the attempt of a leased task, cancelled at once if Run has
// stopped claiming (it is then handed back unrun); s.mu is held.
func (s *Scheduler) begin(l *queue.Lease) *attempt {
	ctx, cancel := context.WithCancelCause(context.Background())
	a := &attempt{ctx: ctx, cancel: cancel, lease: l}
	if old, ok := s.running[l.ID]; ok {
		// The store leased the task again: the attempt still here lost
		// its lease (this process stalled past it), and a stop naming it
		// could no longer find it once this one takes its place.
		old.cancel(task.ErrLeaseLost)
		s.endWaiting(old)
	}
	s.running[l.ID] = a
	select {
	case <-s.stopping:
		cancel(task.ErrShutdown)
	default:
	}
	return a
}

// popWaiting removes and returns the attempt that has waited longest.
func (t *target) popWaiting() *attempt {
	a := t.waiting[0]
	t.waiting[0] = nil
	t.waiting = t.waiting[1:]
	return a
}

// startWaiting launches the attempts leased ahead that t's free slots now
// take; s.mu is held. Once Run has stopped claiming they are handed back
// instead, as handBackWaiting would.
func (s *Scheduler) startWaiting(t *target) {
	for len(t.waiting) > 0 && t.inflight < t.policy.Concurrency {
		a := t.popWaiting()
		select {
		case <-s.stopping:
			a.cancel(task.ErrShutdown)
		default:
		}
		s.launch(t, a)
	}
}

// endWaiting launches a, cancelled, at once if it is waiting for a slot; s.mu
// is held.
func (s *Scheduler) endWaiting(a *attempt) {
	t := s.targets[a.lease.Target]
	if i := slices.Index(t.waiting, a); i >= 0 {
		t.waiting = slices.Delete(t.waiting, i, i+1)
		s.launch(t, a)
	}
}

// expireWaiting hands back the tasks leased ahead that have waited for a
// slot longer than maxWait, and returns when the next one will have (zero:
// none waits). Slots that free this slowly mean the handlers' average run
// time understates them: it is raised to what would have leased none
// ahead, and the returns of quick handlers bring it down again. s.mu is
// held.
func (s *Scheduler) expireWaiting(t *target, now time.Time) time.Time {
	wait := t.maxWait()
	for len(t.waiting) > 0 && now.Sub(t.waiting[0].since) >= wait {
		a := t.popWaiting()
		a.cancel(errNoSlot)
		s.launch(t, a)
		t.runTime = max(t.runTime, time.Duration(t.policy.Concurrency)*wait)
	}
	if len(t.waiting) == 0 {
		return time.Time{}
	}
	return t.waiting[0].since.Add(wait)
}

// handBackWaiting ends, unrun, every attempt leased ahead: Run has stopped
// claiming and none of them has started.
func (s *Scheduler) handBackWaiting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.targets {
		for _, a := range t.waiting {
			a.cancel(task.ErrShutdown)
			s.launch(t, a)
		}
		t.waiting = nil
	}
}

// launch runs an attempt in a slot of t; s.mu is held. An attempt cancelled
// before it started does not run its handler: stopped, it fails; shut
// down, it is handed back uncounted.
func (s *Scheduler) launch(t *target, a *attempt) {
	t.inflight++
	ctx, l := a.ctx, a.lease
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		defer a.cancel(nil)
		started := time.Now()
		var out queue.Outcome
		ran := false
		switch cause := context.Cause(ctx); {
		case errors.Is(cause, task.ErrShutdown):
			out = queue.Outcome{Status: task.Enqueued, Detail: "scheduler stopped before the attempt started"}
		case errors.Is(cause, errNoSlot):
			out = queue.Outcome{Status: task.Enqueued, Detail: "leased ahead and handed back: no slot freed in time"}
		case errors.Is(cause, task.ErrStopped):
			out = queue.Outcome{Status: task.Failed, Error: "stopped on request before the attempt started"}
		case errors.Is(cause, task.ErrLeaseLost):
			out = queue.Outcome{Status: task.Enqueued, Detail: "lease lost before the attempt started"}
		case l.Attempt-1-l.RetryBase-l.Throttled > t.policy.MaxRetries:
			// The attempt before was lost with its process (a crash, a
			// SIGKILL) and never came back to be judged: past MaxRetries it
			// ends the task here, or a request that kills its process would
			// crash every restart.
			out = queue.Outcome{Status: task.Failed,
				Error: fmt.Sprintf("process lost during attempt %d (retries exhausted: %d)", l.Attempt-1, t.policy.MaxRetries)}
		default:
			s.observe(Event{Kind: EventStarted, Target: t.name, TaskID: l.ID, Status: task.Running, Attempt: l.Attempt,
				Duration: time.Since(l.EnqueuedAt)})
			out = s.run(ctx, t, l)
			ran = out.Status != task.Invalid // Invalid: the handler was never entered
		}
		// The handler is done: its slot may take the next task now, whose
		// lease can then share a commit with this finish.
		s.mu.Lock()
		t.inflight--
		t.finishing++
		if ran {
			average(&t.runTime, time.Since(started))
		}
		s.startWaiting(t)
		s.mu.Unlock()
		s.poke()
		// Record the outcome even while shutting down: it is what happened.
		final, err := s.finish(l, out)
		switch {
		case errors.Is(err, task.ErrLeaseLost):
			s.log.Warn("offload: the attempt lost its lease; another attempt has the task", "id", l.ID, "target", t.name, "attempt", l.Attempt)
		case err != nil:
			s.log.Error("offload: finish failed; the task runs again after a restart", "id", l.ID, "target", t.name, "err", err)
		case final == task.Retrying || final == task.Failed || final == task.Expired:
			s.log.Warn("offload: attempt failed", "id", l.ID, "target", t.name, "attempt", l.Attempt, "status", final, "err", out.Error)
		}
		if err == nil && final != task.Enqueued {
			kind := EventFinished
			if final == task.Retrying {
				kind = EventRetried
			}
			s.observe(Event{Kind: kind, Target: t.name, TaskID: l.ID, Status: final, Attempt: l.Attempt,
				Duration: time.Since(started), Err: out.Error})
		}
		s.mu.Lock()
		if s.running[l.ID] == a { // a later attempt may have taken the ID's place
			delete(s.running, l.ID)
		}
		t.finishing--
		s.mu.Unlock()
		s.poke()
	}()
}
