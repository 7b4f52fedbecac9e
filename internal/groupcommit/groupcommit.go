// Package groupcommit batches writes from many goroutines into one commit
// at a time. A single committer goroutine takes everything queued since its
// last commit, with no timer wait, so that concurrent writers share the cost
// of a durable commit (an fsync, a round trip) while a lone writer waits
// about one commit. Both queue backends commit through it.
package groupcommit

import (
	"context"
	"runtime"
	"sync"
	"time"

	"github.com/offload-go/offload/task"
)

// Gathering bounds: see Committer.gather.
const (
	maxGatherYields = 8
	maxGather       = 250 * time.Microsecond
)

// Committer queues ops and hands them to its commit func in batches.
type Committer[Op any] struct {
	commit func(ops []Op) (after func(), err error)

	kick      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once

	mu      sync.Mutex // guards pending and closed
	pending *batch[Op]
	closed  bool
}

type batch[Op any] struct {
	ops  []Op
	done chan struct{}
	err  error
}

func newBatch[Op any]() *batch[Op] { return &batch[Op]{done: make(chan struct{})} }

// Start starts the committer goroutine. commit writes one batch, all of it
// or none; its error is every op's Submit error (ops that can fail on their
// own keep that outcome themselves). after, if not nil, runs once the
// batch's writers are released: the place to wake whoever waits for what
// the commit made ready.
func Start[Op any](commit func(ops []Op) (after func(), err error)) *Committer[Op] {
	c := &Committer[Op]{
		commit:  commit,
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		pending: newBatch[Op](),
	}
	go c.loop()
	return c
}

// Submit queues op for the next commit and waits until that commit is
// over, returning its error. A cancelled ctx is honoured only before op is
// queued: once queued, the outcome is waited for, so that a caller never
// reports failure for what was stored. After Close it returns an error
// wrapping task.ErrClosed.
func (c *Committer[Op]) Submit(ctx context.Context, op Op) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return task.ErrClosed
	}
	b := c.pending
	b.ops = append(b.ops, op)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	<-b.done
	return b.err
}

// Close refuses new ops, commits what is queued, and returns when the
// committer goroutine has ended. It is safe to call more than once.
func (c *Committer[Op]) Close() {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		close(c.stop)
	})
	<-c.done
}

func (c *Committer[Op]) loop() {
	defer close(c.done)
	for {
		select {
		case <-c.kick:
		case <-c.stop:
			// Close refused new ops before closing stop; commit the rest.
			c.commitPending()
			return
		}
		c.gather()
		c.commitPending()
	}
}

// gather lets the writers that the previous commit released (and any other
// runnable goroutine) queue their next ops before the batch is cut, so that
// they share this commit instead of waiting a whole commit for the next.
// Without it, concurrent writers split into two groups that commit in turn,
// each commit carrying only half of them. It only yields the processor, no
// timer, stops as soon as a yield adds nothing (a lone writer is not
// delayed), and stops after maxGatherYields yields or maxGather, so that
// goroutines busy with other work never hold a commit back for long.
func (c *Committer[Op]) gather() {
	start := time.Now()
	n := c.pendingLen()
	for range maxGatherYields {
		runtime.Gosched()
		m := c.pendingLen()
		if m == n || time.Since(start) > maxGather {
			return
		}
		n = m
	}
}

func (c *Committer[Op]) pendingLen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending.ops)
}

func (c *Committer[Op]) commitPending() {
	c.mu.Lock()
	b := c.pending
	c.pending = newBatch[Op]()
	c.pending.ops = make([]Op, 0, len(b.ops)) // the next batch is likely as large
	c.mu.Unlock()
	if len(b.ops) == 0 {
		return
	}
	after, err := c.commit(b.ops)
	b.err = err
	close(b.done)
	if after != nil {
		after()
	}
}
