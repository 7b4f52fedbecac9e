package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/offload-go/offload/queue"
)

// listen opens the listener's own connection (outside the pool: it sits
// in WaitForNotification) and subscribes to the queue's channel.
func (q *Queue) listen(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, q.connCfg)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{q.channel}.Sanitize()); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	return conn, nil
}

// listenLoop passes other replicas' notices to the subscriber. When its
// connection breaks it reconnects with backoff and then announces a task
// and a delivery as ready, since it may have missed both; a stop request
// missed meanwhile is repeated by the heartbeat.
func (q *Queue) listenLoop(conn *pgx.Conn) {
	defer q.wg.Done()
	ctx, cancel := context.WithCancel(q.life)
	defer cancel()
	go func() {
		select {
		case <-q.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	defer func() {
		if conn != nil {
			closeCtx, done := context.WithTimeout(context.Background(), time.Second)
			conn.Close(closeCtx)
			done()
		}
	}()
	backoff := 100 * time.Millisecond
	for {
		if conn == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			var err error
			if conn, err = q.listen(ctx); err != nil {
				conn = nil
				backoff = min(backoff*2, 5*time.Second)
				q.log.Warn("offload postgres: listener reconnect failed", "err", err)
				continue
			}
			backoff = 100 * time.Millisecond
			q.deliver([]queue.Notice{{Kind: queue.TaskReady}, {Kind: queue.DeliveryReady}})
			select {
			case q.reapNow <- struct{}{}:
			default:
			}
		}
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			q.log.Warn("offload postgres: listener connection lost; reconnecting", "err", err)
			conn.Close(context.Background())
			conn = nil
			continue
		}
		if notice, ok := q.parsePayload(n.Payload); ok {
			q.deliver([]queue.Notice{notice})
		}
	}
}

// parsePayload decodes another replica's notice; this replica's own are
// delivered right after their commits, so they are dropped here.
func (q *Queue) parsePayload(p string) (queue.Notice, bool) {
	if len(p) < 1+len(q.ownerHex) || p[1:1+len(q.ownerHex)] == q.ownerHex {
		return queue.Notice{}, false
	}
	id := p[1+len(q.ownerHex):]
	switch p[0] {
	case payloadReady:
		return queue.Notice{Kind: queue.TaskReady}, true
	case payloadStop:
		return queue.Notice{Kind: queue.StopRequested, ID: id}, true
	case payloadDelivery:
		return queue.Notice{Kind: queue.DeliveryReady}, true
	}
	return queue.Notice{}, false
}
