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
	"math/bits"
	"net/http"
	"slices"
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
		dst = appendString(dst, s)
	}
	dst = binary.AppendUvarint(dst, uint64(len(r.Header)))
	for k, vs := range r.Header {
		dst = appendString(dst, k)
		dst = binary.AppendUvarint(dst, uint64(len(vs)))
		for _, v := range vs {
			dst = appendString(dst, v)
		}
	}
	dst = appendKVs(dst, r.PathValues)
	dst = appendKVs(dst, r.Values)
	dst = binary.AppendUvarint(dst, uint64(r.BodySize))
	return appendString(dst, r.Body)
}

// Size returns the length of r's encoding, so that a caller can allocate
// the buffer it gives Append once.
func Size(r *Request) int {
	n := 1
	for _, s := range [...]string{r.Method, r.RequestURI, r.Proto, r.Host, r.RemoteAddr, r.Pattern, r.Blob} {
		n += stringSize(s)
	}
	n += uvarintSize(uint64(len(r.Header)))
	for k, vs := range r.Header {
		n += stringSize(k) + uvarintSize(uint64(len(vs)))
		for _, v := range vs {
			n += stringSize(v)
		}
	}
	n += kvsSize(r.PathValues) + kvsSize(r.Values)
	n += uvarintSize(uint64(r.BodySize))
	return n + stringSize(r.Body)
}

func uvarintSize(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

func stringSize[T string | []byte](s T) int { return uvarintSize(uint64(len(s))) + len(s) }

func kvsSize(kvs []KV) int {
	n := uvarintSize(uint64(len(kvs)))
	for _, kv := range kvs {
		n += stringSize(kv.Key) + stringSize(kv.Value)
	}
	return n
}

func appendString[T string | []byte](dst []byte, s T) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendKVs(dst []byte, kvs []KV) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(kvs)))
	for _, kv := range kvs {
		dst = appendString(dst, kv.Key)
		dst = appendString(dst, kv.Value)
	}
	return dst
}

// Decode decodes a record made by Append. The result shares no memory with b.
func Decode(b []byte) (*Request, error) {
	d := decoder{b: b}
	if v := d.byte(); d.err == nil && v != version {
		return nil, fmt.Errorf("%w: unknown version %d", ErrCorrupt, v)
	}
	r := &Request{}
	for _, p := range [...]*string{&r.Method, &r.RequestURI, &r.Proto, &r.Host, &r.RemoteAddr, &r.Pattern, &r.Blob} {
		*p = d.string()
	}
	if n := d.count(); n > 0 {
		r.Header = make(http.Header, n)
		for range n {
			k := d.string()
			vs := make([]string, d.count())
			for i := range vs {
				vs[i] = d.string()
			}
			r.Header[k] = vs
		}
	}
	r.PathValues = d.kvs()
	r.Values = d.kvs()
	r.BodySize = int64(d.uvarint())
	if body := d.bytes(); len(body) > 0 {
		r.Body = append([]byte(nil), body...)
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(d.b))
	}
	if d.err == nil && r.BodySize < 0 {
		d.err = fmt.Errorf("%w: negative body size", ErrCorrupt)
	}
	if d.err != nil {
		return nil, d.err
	}
	return r, nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated %s", ErrCorrupt, what)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail("header")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("length")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads an element count; each element takes at least one byte, so a
// count beyond the remaining input is corrupt, which bounds allocations.
func (d *decoder) count() int {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("list")
		return 0
	}
	return int(n)
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("field")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string { return string(d.bytes()) }

func (d *decoder) kvs() []KV {
	n := d.count()
	if n == 0 {
		return nil
	}
	kvs := make([]KV, n)
	for i := range kvs {
		kvs[i] = KV{d.string(), d.string()}
	}
	return kvs
}

// NewFingerprint starts the fingerprint that an Idempotency-Key is matched
// with: SHA-256 over the method, the request URI and then the body, which
// the caller writes to the returned hash.
func NewFingerprint(method, requestURI string) hash.Hash {
	h := sha256.New()
	h.Write([]byte(method + " " + requestURI + "\n"))
	return h
}
