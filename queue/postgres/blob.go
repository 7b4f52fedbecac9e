package postgres

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"

	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
)

// CreateBlob implements queue.Backend. A large body is stored in the
// database, so that every replica can replay it: as bytea chunks of
// Options.BlobChunkSize, each written as soon as it is full, so that an
// upload holds one chunk in memory whatever its size. The chunks are
// committed without waiting for the WAL flush; Close's commit waits, and
// so makes them all durable (a later flush covers earlier WAL). A blob
// that no task names is removed Options.BlobGrace after its last write.
func (q *Queue) CreateBlob() (queue.Blob, error) {
	if q.isClosed() {
		return nil, fmt.Errorf("postgres: create blob: %w", task.ErrClosed)
	}
	var r [16]byte
	_, _ = rand.Read(r[:])
	return &blob{q: q, name: hex.EncodeToString(r[:])}, nil
}

type blob struct {
	q       *Queue
	name    string
	buf     []byte
	seq     int32
	size    int64
	closed  bool
	removed bool
}

func (b *blob) Name() string { return b.name }

func (b *blob) Write(p []byte) (int, error) {
	if b.closed || b.removed {
		return 0, fmt.Errorf("postgres: write blob %s: closed", b.name)
	}
	chunk := b.q.opts.BlobChunkSize
	n := len(p)
	for len(p) > 0 {
		if b.buf == nil {
			b.buf = make([]byte, 0, chunk)
		}
		k := min(len(p), chunk-len(b.buf))
		b.buf = append(b.buf, p[:k]...)
		p = p[k:]
		if len(b.buf) == chunk {
			if err := b.flush(false); err != nil {
				return 0, err
			}
		}
	}
	b.size += int64(n)
	return n, nil
}

// flush writes the buffered chunk; the last one (at Close) is committed
// durably with the blob's size.
func (b *blob) flush(last bool) error {
	ctx, cancel := b.q.bind(context.Background())
	defer cancel()
	batch := &pgx.Batch{}
	if !last {
		batch.Queue(`SELECT set_config('synchronous_commit', 'off', true)`)
	}
	if len(b.buf) > 0 {
		batch.Queue(b.q.sql.blobChunk, b.name, b.seq, b.buf)
	}
	if last {
		batch.Queue(b.q.sql.blobClose, b.name, b.size, b.seq+int32(min(len(b.buf), 1)))
	}
	// One implicit transaction: the statements of a batch share one Sync.
	if err := b.q.pool.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("postgres: write blob %s: %w", b.name, err)
	}
	if len(b.buf) > 0 {
		b.seq++
	}
	b.buf = b.buf[:0]
	return nil
}

// Close makes the blob durable. It is safe to call more than once.
func (b *blob) Close() error {
	if b.closed {
		return nil
	}
	if b.removed {
		return fmt.Errorf("postgres: close blob %s: removed", b.name)
	}
	if err := b.flush(true); err != nil {
		return err
	}
	b.closed, b.buf = true, nil
	return nil
}

// Remove discards the blob, unless a task names it.
func (b *blob) Remove() error {
	b.removed, b.buf = true, nil
	ctx, cancel := b.q.bind(context.Background())
	defer cancel()
	if _, err := b.q.pool.Exec(ctx, b.q.sql.blobRemove, b.name); err != nil {
		return fmt.Errorf("postgres: remove blob %s: %w", b.name, err)
	}
	return nil
}

// OpenBody implements queue.Backend. A blob body is read one chunk at a
// time.
func (q *Queue) OpenBody(l *queue.Lease) (io.ReadCloser, error) {
	if l.Request == nil {
		return nil, fmt.Errorf("postgres: body of %s: %w: %w", l.ID, queue.ErrNoBody, l.Corrupt)
	}
	if l.Request.Blob == "" {
		return io.NopCloser(bytes.NewReader(l.Request.Body)), nil
	}
	ctx, cancel := q.bind(context.Background())
	defer cancel()
	var size *int64
	var chunks *int32
	var complete bool
	err := q.pool.QueryRow(ctx, q.sql.blobInfo, l.Request.Blob).Scan(&size, &chunks, &complete)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && (!complete || size == nil || chunks == nil)) {
		return nil, fmt.Errorf("postgres: body of %s: %w: blob %s is missing or incomplete", l.ID, queue.ErrNoBody, l.Request.Blob)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: body of %s: %w", l.ID, err)
	}
	if *size != l.Request.BodySize {
		return nil, fmt.Errorf("postgres: body of %s: %w: blob %s is %d bytes; the task's body is %d", l.ID, queue.ErrNoBody, l.Request.Blob, *size, l.Request.BodySize)
	}
	return &blobReader{q: q, id: l.ID, name: l.Request.Blob, chunks: *chunks, size: *size}, nil
}

type blobReader struct {
	q      *Queue
	id     string
	name   string
	chunks int32
	size   int64
	seq    int32
	read   int64
	cur    []byte
}

func (r *blobReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.seq == r.chunks {
			if r.read != r.size {
				return 0, fmt.Errorf("postgres: body of %s: %d bytes, want %d", r.id, r.read, r.size)
			}
			return 0, io.EOF
		}
		ctx, cancel := r.q.bind(context.Background())
		err := r.q.pool.QueryRow(ctx, r.q.sql.blobRead, r.name, r.seq).Scan(&r.cur)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("postgres: body of %s: chunk %d: %w", r.id, r.seq, err)
		}
		r.seq++
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	r.read += int64(n)
	return n, nil
}

func (r *blobReader) Close() error {
	r.cur = nil
	return nil
}
