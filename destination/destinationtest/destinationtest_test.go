package destinationtest_test

import (
	"context"
	"slices"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/destination/destinationtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// collector is the smallest conforming sink: it keeps what it is given.
type collector struct {
	mu   sync.Mutex
	recs []destination.Record
}

func (c *collector) Deliver(ctx context.Context, rec destination.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recs = append(c.recs, rec)
	return nil
}

func (c *collector) received() []destination.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.recs)
}

var _ destination.Destination = (*collector)(nil)

func TestRunCollector(t *testing.T) {
	t.Parallel()
	destinationtest.Run(t, func(t *testing.T) (destination.Destination, func() []destination.Record) {
		c := &collector{}
		return c, c.received
	})
}

// async hands each record to a goroutine of its own, the way a sink with
// a buffer does; received waits for the hand-offs, as Run asks of such
// destinations.
type async struct {
	sink collector
	wg   sync.WaitGroup
}

func (a *async) Deliver(ctx context.Context, rec destination.Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	a.wg.Go(func() { _ = a.sink.Deliver(context.WithoutCancel(ctx), rec) })
	return nil
}

func (a *async) received() []destination.Record {
	a.wg.Wait()
	return a.sink.received()
}

func TestRunAsync(t *testing.T) {
	t.Parallel()
	destinationtest.Run(t, func(t *testing.T) (destination.Destination, func() []destination.Record) {
		a := &async{}
		t.Cleanup(func() { a.wg.Wait() })
		return a, a.received
	})
}
