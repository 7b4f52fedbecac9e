package queue

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// CreateBlob implements Backend: a new 0600 file in the blob directory,
// named by 128 random bits, never by anything a client sent. With a
// Sealer, the body is sealed as it is written (see sealedBlob).
func (q *Queue) CreateBlob() (Blob, error) {
	var r [16]byte
	_, _ = rand.Read(r[:])
	name := hex.EncodeToString(r[:])
	if q.opts.Sealer != nil {
		name += sealedBlobSuffix
	}
	f, err := os.OpenFile(filepath.Join(q.blobDir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: create blob: %w", err)
	}
	b := &blobFile{f: f, dir: q.blobDir, name: name}
	if q.opts.Sealer != nil {
		return newSealedBlob(b, q.opts.Sealer), nil
	}
	return b, nil
}

type blobFile struct {
	f      *os.File
	dir    string
	name   string
	closed bool
}

func (b *blobFile) Write(p []byte) (int, error) { return b.f.Write(p) }
func (b *blobFile) Name() string                { return b.name }

// Close syncs the file and its directory, so that the record that will
// name it never points at a missing body.
func (b *blobFile) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	if err := b.f.Sync(); err != nil {
		b.f.Close()
		return fmt.Errorf("queue: sync blob: %w", err)
	}
	if err := b.f.Close(); err != nil {
		return fmt.Errorf("queue: close blob: %w", err)
	}
	return syncDir(b.dir)
}

func (b *blobFile) Remove() error {
	if !b.closed {
		b.closed = true
		b.f.Close()
	}
	if err := os.Remove(filepath.Join(b.dir, b.name)); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// OpenBody implements Backend.
func (q *Queue) OpenBody(l *Lease) (io.ReadCloser, error) {
	if l.Request == nil {
		return nil, fmt.Errorf("queue: body of %s: %w: %w", l.ID, ErrNoBody, l.Corrupt)
	}
	if l.Request.Blob == "" {
		return io.NopCloser(bytes.NewReader(l.Request.Body)), nil
	}
	// The name comes from our own record; check it anyway, so that a
	// damaged record can never reach outside the blob directory.
	sealed, ok := blobKind(l.Request.Blob)
	if !ok {
		return nil, fmt.Errorf("queue: body of %s: %w: bad blob name %q", l.ID, ErrNoBody, l.Request.Blob)
	}
	if sealed && q.opts.Sealer == nil {
		return nil, fmt.Errorf("queue: body of %s: blob %s is sealed and the queue has no Options.Sealer: %w", l.ID, l.Request.Blob, ErrSealed)
	}
	f, err := os.Open(filepath.Join(q.blobDir, l.Request.Blob))
	if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("%w: %w", ErrNoBody, err)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: body of %s: %w", l.ID, err)
	}
	if sealed {
		return openSealedBody(q.opts.Sealer, f, l)
	}
	// A sealed blob's seal catches a file cut short; a plain one would
	// replay as a shorter body without an error.
	fi, err := f.Stat()
	if err == nil {
		err = checkBlobSize(fi, l.Request.BodySize)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("queue: body of %s: %w", l.ID, err)
	}
	return f, nil
}

// checkBlobSize checks that a plain blob file holds the body size its task
// records.
func checkBlobSize(fi fs.FileInfo, want int64) error {
	if fi.Size() != want {
		return fmt.Errorf("%w: blob %s is %d bytes; the task's body is %d", ErrNoBody, fi.Name(), fi.Size(), want)
	}
	return nil
}
