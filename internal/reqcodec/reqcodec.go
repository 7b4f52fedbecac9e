// Package reqcodec encodes the HTTP request that offload stores for an async
// task into a compact binary record, and decodes it for replay.
//
// The format is versioned; every field is length-prefixed, so Decode checks
// every length against the input and never panics on hostile or truncated
// bytes.
package reqcodec

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"maps"
	"net/http"
	"slices"

	"github.com/offload-go/offload/internal/wire"
)

const version = 1

// ErrCorrupt is wrapped by Decode for bytes that are not a valid record.
var ErrCorrupt = errors.New("reqcodec: corrupt record")

// Request is what is kept of an HTTP request to replay it later.
type Request struct {
	Method     string
	RequestURI string // as received: path and query
	Proto      string
	Host       string
	RemoteAddr string
	Header     http.Header
	// Pattern is the ServeMux pattern that routed the original request, and
	// PathValues its wildcards, so that r.PathValue works on replay.
	Pattern    string
	PathValues []KV
	// Values are what the application's capture hook kept of the context.
	Values []KV
	// BodySize counts the body's bytes. The body is either Body (inline) or
	// the blob file named Blob.
	BodySize int64
	Body     []byte
	Blob     string
}

// KV is one name and value.
type KV struct{ Key, Value string }

// SortedKVs returns m as KVs sorted by key (nil for an empty m), so that
// the same values always encode the same way.
func SortedKVs(m map[string]string) []KV {
	if len(m) == 0 {
		return nil
	}
	kvs := make([]KV, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		kvs = append(kvs, KV{Key: k, Value: m[k]})
	}
	return kvs
}

// Append appends the encoding of r to dst.
func Append(dst []byte, r *Request) []byte {
	dst = append(dst, version)
	for _, s := range [...]string{r.Method, r.RequestURI, r.Proto, r.Host, r.RemoteAddr, r.Pattern, r.Blob} {
		dst = wire.AppendString(dst, s)
	}
	dst = wire.AppendHeader(dst, r.Header)
	dst = appendKVs(dst, r.PathValues)
	dst = appendKVs(dst, r.Values)
	dst = binary.AppendUvarint(dst, uint64(r.BodySize))
	return wire.AppendString(dst, r.Body)
}

// Size returns the length of r's encoding, so that a caller can allocate
// the buffer it gives Append once.
func Size(r *Request) int {
	n := 1
	for _, s := range [...]string{r.Method, r.RequestURI, r.Proto, r.Host, r.RemoteAddr, r.Pattern, r.Blob} {
		n += wire.StringSize(s)
	}
	n += wire.HeaderSize(r.Header)
	n += kvsSize(r.PathValues) + kvsSize(r.Values)
	n += wire.UvarintSize(uint64(r.BodySize))
	return n + wire.StringSize(r.Body)
}

func kvsSize(kvs []KV) int {
	n := wire.UvarintSize(uint64(len(kvs)))
	for _, kv := range kvs {
		n += wire.StringSize(kv.Key) + wire.StringSize(kv.Value)
	}
	return n
}

func appendKVs(dst []byte, kvs []KV) []byte {
	return wire.AppendList(dst, kvs, func(dst []byte, kv *KV) []byte {
		return wire.AppendString(wire.AppendString(dst, kv.Key), kv.Value)
	})
}

// Decode decodes a record made by Append. The result shares no memory with b.
func Decode(b []byte) (*Request, error) {
	d := wire.NewDecoder(b)
	if v := d.Byte(); d.Err() == nil && v != version {
		return nil, fmt.Errorf("%w: unknown version %d", ErrCorrupt, v)
	}
	r := &Request{}
	for _, p := range [...]*string{&r.Method, &r.RequestURI, &r.Proto, &r.Host, &r.RemoteAddr, &r.Pattern, &r.Blob} {
		*p = d.String()
	}
	r.Header = d.Header()
	r.PathValues = decodeKVs(&d)
	r.Values = decodeKVs(&d)
	r.BodySize = int64(d.Uvarint())
	if body := d.Bytes(); len(body) > 0 {
		r.Body = append([]byte(nil), body...)
	}
	err := d.End()
	if err == nil && r.BodySize < 0 {
		err = errors.New("negative body size")
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return r, nil
}

func decodeKVs(d *wire.Decoder) []KV {
	kvs := wire.MakeList[KV](d, 2) // two lengths
	for i := range kvs {
		kvs[i] = KV{d.String(), d.String()}
	}
	return kvs
}

// NewFingerprint starts the fingerprint that an Idempotency-Key is matched
// with: SHA-256 over the method, the request URI, the captured values (who
// sent it: a key reused by another user or tenant must not be answered
// with the first one's task) and then the body, which the caller writes to
// the returned hash.
func NewFingerprint(method, requestURI string, values []KV) hash.Hash {
	h := sha256.New()
	h.Write([]byte(method + " " + requestURI + "\n"))
	h.Write(appendKVs(nil, values))
	return h
}
