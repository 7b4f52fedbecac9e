package queue

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/internal/wire"
	"github.com/offload-go/offload/task"
)

// ErrSealed is wrapped by every failure to open sealed data: an unknown key
// ID, a wrong key, data that was changed or moved to another record, a
// sealed blob cut short, and a sealed record read by a queue without
// Options.Sealer.
var ErrSealed = errors.New("sealed data cannot be opened")

// A Sealer encrypts and authenticates what the queue stores of requests
// and responses when it is set as Options.Sealer. [AESGCM] is the one
// offload provides; its methods are safe for concurrent use, as a Sealer's
// must be.
type Sealer interface {
	// Seal encrypts and authenticates plaintext, binds it to
	// additionalData (which is not part of the output), appends the result
	// to dst and returns it. The output must name the key that sealed it,
	// so that Open still opens it after the current key has changed, and
	// be at most 1 KiB longer than plaintext. dst must not overlap
	// plaintext.
	Seal(dst, plaintext, additionalData []byte) ([]byte, error)
	// Open checks and decrypts what Seal made with the same
	// additionalData, appends the plaintext to dst and returns it. Every
	// error it returns wraps ErrSealed. dst must not overlap sealed.
	Open(dst, sealed, additionalData []byte) ([]byte, error)
}

// AESGCM is a Sealer with AES-256-GCM under keys the application supplies,
// each known by an ID. Seal uses the current key; Open uses whichever key
// the data names, so that data sealed before a key rotation still opens
// while its key is kept.
//
// Its output is a version byte (1), the key ID's length (one byte), the key
// ID, a random 96-bit nonce, and the ciphertext with its 16-byte tag. The
// nonce is random, so one key must not seal more than 2^32 times (a 1 GiB
// blob body takes 16,384 seals): rotate keys well before that.
type AESGCM struct {
	current string
	aeads   map[string]cipher.AEAD
}

var _ Sealer = (*AESGCM)(nil)

const (
	aesgcmVersion = 1
	aesKeySize    = 32
)

// NewAESGCM returns an AESGCM that seals with keys[current] and opens with
// any of keys. Each key must be 32 bytes (AES-256) and each key ID 1 to 255
// bytes; current must be one of the IDs. To rotate, add a new key with a
// new ID, make it current, and keep the old ones as long as records sealed
// with them are kept (Options.Retention, for finished tasks). The keys are
// not kept: NewAESGCM expands them into the ciphers.
func NewAESGCM(current string, keys map[string][]byte) (*AESGCM, error) {
	a := &AESGCM{current: current, aeads: make(map[string]cipher.AEAD, len(keys))}
	for id, key := range keys {
		if id == "" || len(id) > 255 {
			return nil, fmt.Errorf("queue: AES-GCM key ID %q: must be 1 to 255 bytes", id)
		}
		if len(key) != aesKeySize {
			return nil, fmt.Errorf("queue: AES-GCM key %q is %d bytes, want %d (AES-256)", id, len(key), aesKeySize)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, fmt.Errorf("queue: AES-GCM key %q: %w", id, err)
		}
		if a.aeads[id], err = cipher.NewGCMWithRandomNonce(block); err != nil {
			return nil, fmt.Errorf("queue: AES-GCM key %q: %w", id, err)
		}
	}
	if a.aeads[current] == nil {
		return nil, fmt.Errorf("queue: AES-GCM current key ID %q is not among the keys", current)
	}
	return a, nil
}

// Seal implements Sealer with the current key. It never fails.
func (a *AESGCM) Seal(dst, plaintext, additionalData []byte) ([]byte, error) {
	dst = append(dst, aesgcmVersion, byte(len(a.current)))
	dst = append(dst, a.current...)
	return a.aeads[a.current].Seal(dst, nil, plaintext, additionalData), nil
}

// Open implements Sealer with the key that sealed is sealed with. It wraps
// ErrSealed for data of another format, an unknown key ID, and data that
// fails authentication (changed, sealed with other additional data, or
// with another key under the same ID).
func (a *AESGCM) Open(dst, sealed, additionalData []byte) ([]byte, error) {
	if len(sealed) < 2 || sealed[0] != aesgcmVersion {
		return nil, fmt.Errorf("queue: AES-GCM: not AES-GCM sealed data: %w", ErrSealed)
	}
	n := int(sealed[1])
	if len(sealed) < 2+n {
		return nil, fmt.Errorf("queue: AES-GCM: truncated key ID: %w", ErrSealed)
	}
	id := sealed[2 : 2+n]
	aead := a.aeads[string(id)]
	if aead == nil {
		return nil, fmt.Errorf("queue: AES-GCM: unknown key ID %q: %w", id, ErrSealed)
	}
	body := sealed[2+n:]
	if len(body) < aead.Overhead() {
		return nil, fmt.Errorf("queue: AES-GCM key %q: truncated ciphertext: %w", id, ErrSealed)
	}
	out, err := aead.Open(dst, nil, body, additionalData)
	if err != nil {
		return nil, fmt.Errorf("queue: AES-GCM key %q: authentication failed (data changed, moved from another record, or another key under this ID): %w", id, ErrSealed)
	}
	return out, nil
}

// sealOverhead is the most a Sealer may add to what it seals.
const sealOverhead = 1 << 10

// A sealed job record is the plain head (as a plain record's, with
// version sealedRecordVersion), the blob name (plain, so that purge and
// Check find the file without a key), and the sealed encoded request,
// whose additional data is recordAD: the task key and everything before
// the sealed part. So the sealed request cannot be moved to another task,
// and the head cannot be changed, without failing to open.
const sealedRecordVersion = 2

// Labels that keep the additional data of each kind of sealed data apart.
const (
	adRecord   = "offload/record\x00"
	adResponse = "offload/response\x00"
	adBlob     = "offload/blob\x00"
)

func recordAD(key, head []byte) []byte {
	ad := make([]byte, 0, len(adRecord)+len(key)+len(head))
	return append(append(append(ad, adRecord...), key...), head...)
}

func responseAD(key []byte) []byte {
	return append(append(make([]byte, 0, len(adResponse)+len(key)), adResponse...), key...)
}

// sealRecord is appendRecord for a queue with a Sealer. It runs on the
// caller's goroutine, like the encoding of a plain record.
func sealRecord(sl Sealer, key []byte, m *jobMeta, req *reqcodec.Request) ([]byte, error) {
	if req.Blob != "" {
		if sealed, ok := blobKind(req.Blob); !ok || !sealed {
			return nil, fmt.Errorf("blob %q is not a sealed blob from CreateBlob", req.Blob)
		}
	}
	plain := reqcodec.Append(make([]byte, 0, reqcodec.Size(req)), req)
	defer clear(plain)
	rec := make([]byte, 0, recordSize(m, req)+binary.MaxVarintLen64+len(req.Blob)+sealOverhead)
	rec = appendHead(rec, sealedRecordVersion, m)
	rec = wire.AppendString(rec, req.Blob)
	return sl.Seal(rec, plain, recordAD(key, rec))
}

// sealedParts splits what follows a sealed record's head: the blob name
// ("" for an inline body) and the sealed request.
func sealedParts(rest []byte) (blob string, sealed []byte, err error) {
	d := wire.NewDecoder(rest)
	blob, sealed = d.String(), d.Rest()
	if d.Err() != nil {
		return "", nil, errTruncated
	}
	if blob != "" {
		if s, ok := blobKind(blob); !ok || !s {
			return "", nil, fmt.Errorf("%w: bad blob name %q in a sealed record", reqcodec.ErrCorrupt, blob)
		}
	}
	return blob, sealed, nil
}

// recordBlob returns the name of the blob that a record's body is in, ""
// for an inline body, without opening a sealed record.
func recordBlob(m *jobMeta, rest []byte) (string, error) {
	if m.sealed {
		blob, _, err := sealedParts(rest)
		return blob, err
	}
	req, err := reqcodec.Decode(rest)
	if err != nil {
		return "", err
	}
	return req.Blob, nil
}

// openRequest decodes the request of the record rec stored under key,
// opening it if it is sealed; m and rest are what decodeMeta returned for
// rec. For a plain record it is reqcodec.Decode(rest).
func openRequest(sl Sealer, key, rec []byte, m *jobMeta, rest []byte) (*reqcodec.Request, error) {
	if !m.sealed {
		return reqcodec.Decode(rest)
	}
	if sl == nil {
		return nil, fmt.Errorf("the request is sealed and the queue has no Options.Sealer: %w", ErrSealed)
	}
	blob, sealed, err := sealedParts(rest)
	if err != nil {
		return nil, err
	}
	plain, err := sl.Open(nil, sealed, recordAD(key, rec[:len(rec)-len(sealed)]))
	if err != nil {
		return nil, fmt.Errorf("sealed request: %w", err)
	}
	// plain is not cleared after use: sealed may be the database's
	// read-only memory, and a Sealer is not bound to copy it.
	req, err := reqcodec.Decode(plain) // shares no memory with plain
	if err != nil {
		return nil, err
	}
	if req.Blob != blob {
		return nil, fmt.Errorf("%w: sealed request names blob %q, its record %q", reqcodec.ErrCorrupt, req.Blob, blob)
	}
	return req, nil
}

// openClaimed decodes the request of a claimed sealed record (a copy of the
// whole record), outside the committer's transaction.
func openClaimed(sl Sealer, key []byte, id string, rec []byte) (*reqcodec.Request, error) {
	m, rest, err := decodeMeta(rec)
	if err == nil {
		var req *reqcodec.Request
		if req, err = openRequest(sl, key, rec, m, rest); err == nil {
			return req, nil
		}
	}
	return nil, fmt.Errorf("queue: task %s: %w", id, err)
}

// sealResponse seals the JSON of r for the task stored under key.
func sealResponse(sl Sealer, key []byte, r *task.Response) ([]byte, error) {
	plain, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode response: %w", err)
	}
	defer clear(plain)
	return sl.Seal(nil, plain, responseAD(key))
}

func openResponse(sl Sealer, key, sealed []byte) (*task.Response, error) {
	if sl == nil {
		return nil, fmt.Errorf("the response is sealed and the queue has no Options.Sealer: %w", ErrSealed)
	}
	plain, err := sl.Open(nil, sealed, responseAD(key))
	if err != nil {
		return nil, fmt.Errorf("sealed response: %w", err)
	}
	defer clear(plain)
	r := &task.Response{}
	if err := json.Unmarshal(plain, r); err != nil {
		return nil, fmt.Errorf("%w: sealed response: %v", reqcodec.ErrCorrupt, err)
	}
	return r, nil
}

// fillResponse sets t.Response from a sealed response in s, if any. A
// response that cannot be opened is left out, as a request that cannot be
// decoded is: the task is still shown.
func fillResponse(t *task.Task, sl Sealer, key []byte, s *state) {
	if s.SealedResponse != nil {
		t.Response, _ = openResponse(sl, key, s.SealedResponse)
	}
}

// Sealed blobs. A queue with a Sealer names its blobs with sealedBlobSuffix,
// so that a body stored before sealing was turned on is still read as it
// was written. The name is part of the sealed record, so it cannot be
// changed to read a sealed blob as plain.
//
// A sealed blob file is sealedBlobMagic and then segments of at most
// blobSegment bytes of body, each sealed on its own, so that writing and
// reading take one segment of memory whatever the body's size:
//
//	flag(1) length(4, big-endian) sealed(length)
//
// flag is 1 for the last segment and 0 before it; the additional data of
// segment i is adBlob, the blob's name, i (8 bytes, big-endian) and flag.
// So a segment cannot be changed, moved to another place or blob, or the
// body cut short or extended, without failing to open. An empty body is
// one empty last segment.
const (
	sealedBlobSuffix = ".sealed"
	sealedBlobMagic  = "offload/sealed-blob/1\n"
	blobSegment      = 64 << 10
	segmentHeader    = 5
	maxSealedSegment = blobSegment + sealOverhead
)

// blobKind says whether name is a blob name the queue makes (32 hex
// digits, then sealedBlobSuffix for a sealed blob), and if so whether it
// names a sealed blob.
func blobKind(name string) (sealed, ok bool) {
	hexName, sealed := strings.CutSuffix(name, sealedBlobSuffix)
	if _, err := hex.DecodeString(hexName); err != nil || len(hexName) != 32 {
		return false, false
	}
	return sealed, true
}

func segmentAD(dst []byte, name string, index uint64, flag byte) []byte {
	dst = append(append(dst[:0], adBlob...), name...)
	return append(binary.BigEndian.AppendUint64(dst, index), flag)
}

// sealedBlob is a blobFile whose writes are sealed segment by segment.
type sealedBlob struct {
	*blobFile
	sl    Sealer
	plain []byte // the segment being filled
	out   []byte // a segment as written: magic (first only), header, sealed
	ad    []byte
	index uint64
	err   error // sticky: a blob that failed once is not written again
}

func newSealedBlob(b *blobFile, sl Sealer) *sealedBlob {
	return &sealedBlob{
		blobFile: b,
		sl:       sl,
		plain:    make([]byte, 0, blobSegment),
		out:      make([]byte, 0, len(sealedBlobMagic)+segmentHeader+maxSealedSegment),
	}
}

// Write keeps a full segment until more bytes come (or Close), since only
// then is it known not to be the last one.
func (b *sealedBlob) Write(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.closed {
		return 0, fmt.Errorf("queue: write blob %s: %w", b.name, os.ErrClosed)
	}
	n := len(p)
	for len(p) > 0 {
		if len(b.plain) == blobSegment {
			if err := b.flush(0); err != nil {
				return n - len(p), err
			}
		}
		k := copy(b.plain[len(b.plain):blobSegment], p)
		b.plain, p = b.plain[:len(b.plain)+k], p[k:]
	}
	return n, nil
}

func (b *sealedBlob) flush(flag byte) error {
	out := b.out[:0]
	if b.index == 0 {
		out = append(out, sealedBlobMagic...)
	}
	h := len(out)
	out = append(out, flag, 0, 0, 0, 0)
	b.ad = segmentAD(b.ad, b.name, b.index, flag)
	out, err := b.sl.Seal(out, b.plain, b.ad)
	if err == nil && len(out)-h-segmentHeader > maxSealedSegment {
		err = fmt.Errorf("the Sealer added %d bytes to a segment, more than %d", len(out)-h-segmentHeader-len(b.plain), sealOverhead)
	}
	if err != nil {
		b.err = fmt.Errorf("queue: seal blob %s segment %d: %w", b.name, b.index, err)
		return b.err
	}
	binary.BigEndian.PutUint32(out[h+1:], uint32(len(out)-h-segmentHeader))
	b.out = out
	if _, err := b.f.Write(out); err != nil {
		b.err = fmt.Errorf("queue: write blob %s: %w", b.name, err)
		return b.err
	}
	b.index++
	clear(b.plain)
	b.plain = b.plain[:0]
	return nil
}

// Remove discards the blob, clearing the body it still holds.
func (b *sealedBlob) Remove() error {
	clear(b.plain)
	return b.blobFile.Remove()
}

// Close writes the last segment, then syncs and closes the file as
// blobFile.Close does.
func (b *sealedBlob) Close() error {
	if b.closed {
		return nil
	}
	if b.err == nil {
		b.flush(1)
	}
	clear(b.plain)
	if b.err != nil {
		b.closed = true
		b.f.Close()
		return b.err
	}
	return b.blobFile.Close()
}

// openSealedBody reads the sealed blob f of lease l. It opens the first
// segment before it returns, so that a missing or wrong key is an error
// here (the task is then Invalid) rather than in the middle of a replay.
func openSealedBody(sl Sealer, f *os.File, l *Lease) (io.ReadCloser, error) {
	r := &sealedBody{f: f, sl: sl, id: l.ID, name: l.Request.Blob, size: l.Request.BodySize, buf: make([]byte, maxSealedSegment)}
	magic := make([]byte, len(sealedBlobMagic))
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != sealedBlobMagic {
		f.Close()
		return nil, fmt.Errorf("queue: body of %s: blob %s is not a sealed blob: %w", l.ID, r.name, ErrSealed)
	}
	if err := r.next(); err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

// sealedBody reads a sealed blob one segment at a time.
type sealedBody struct {
	f        *os.File
	sl       Sealer
	id, name string
	buf      []byte // the sealed segment
	ad       []byte
	plain    []byte // the opened segment; plain[off:] is unread
	off      int
	index    uint64
	size     int64 // the body's size, as its task records it
	read     int64 // the plaintext opened so far
	last     bool  // the last segment is open
	err      error
}

func (r *sealedBody) fail(format string, args ...any) error {
	r.err = fmt.Errorf("queue: body of %s: segment %d: %s: %w", r.id, r.index, fmt.Sprintf(format, args...), ErrSealed)
	return r.err
}

// next opens the next segment.
func (r *sealedBody) next() error {
	var h [segmentHeader]byte
	switch _, err := io.ReadFull(r.f, h[:]); {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return r.fail("the blob ends before its last segment")
	case err != nil:
		r.err = fmt.Errorf("queue: body of %s: %w", r.id, err)
		return r.err
	}
	flag, n := h[0], binary.BigEndian.Uint32(h[1:])
	if flag > 1 || n > maxSealedSegment {
		return r.fail("bad segment header")
	}
	if _, err := io.ReadFull(r.f, r.buf[:n]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return r.fail("the blob ends within a segment")
		}
		r.err = fmt.Errorf("queue: body of %s: %w", r.id, err)
		return r.err
	}
	r.ad = segmentAD(r.ad, r.name, r.index, flag)
	plain, err := r.sl.Open(r.plain[:0], r.buf[:n], r.ad)
	if err != nil {
		r.err = fmt.Errorf("queue: body of %s: segment %d: %w", r.id, r.index, err)
		return r.err
	}
	r.plain, r.off = plain, 0
	r.read += int64(len(plain))
	if flag == 1 && r.read != r.size {
		r.err = fmt.Errorf("queue: body of %s: %w: blob %s holds %d bytes; the task's body is %d", r.id, ErrNoBody, r.name, r.read, r.size)
		return r.err
	}
	if flag == 1 {
		var one [1]byte
		switch k, err := io.ReadFull(r.f, one[:]); {
		case k > 0:
			return r.fail("data after the last segment")
		case !errors.Is(err, io.EOF):
			r.err = fmt.Errorf("queue: body of %s: %w", r.id, err)
			return r.err
		}
		r.last = true
	}
	r.index++
	return nil
}

func (r *sealedBody) Read(p []byte) (int, error) {
	for r.off == len(r.plain) {
		switch {
		case r.err != nil:
			return 0, r.err
		case r.last:
			return 0, io.EOF
		}
		if err := r.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.plain[r.off:])
	r.off += n
	return n, nil
}

func (r *sealedBody) Close() error {
	clear(r.plain)
	return r.f.Close()
}
