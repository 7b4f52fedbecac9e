// Package wire holds the primitives that offload's binary records are built
// from: uvarint lengths and counts, length-prefixed strings and HTTP
// headers, appended to a byte slice and read back by a [Decoder].
//
// A Decoder checks every length and count against what is left of its
// input, so hostile or truncated bytes give an error, never a panic or more
// elements than the input could hold. Its error is sticky: a record is read
// field by field and checked once at the end.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/http"
)

// AppendString appends s with its length before it.
func AppendString[T ~string | ~[]byte](dst []byte, s T) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// AppendHeader appends h as a count of names, each followed by its count of
// values and the values. Map order is random, so equal headers may encode
// differently; they decode the same.
func AppendHeader(dst []byte, h http.Header) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(h)))
	for k, vs := range h {
		dst = AppendString(dst, k)
		dst = binary.AppendUvarint(dst, uint64(len(vs)))
		for _, v := range vs {
			dst = AppendString(dst, v)
		}
	}
	return dst
}

// AppendList appends the length of list and then each element with
// appendOne.
func AppendList[T any](dst []byte, list []T, appendOne func(dst []byte, v *T) []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(list)))
	for i := range list {
		dst = appendOne(dst, &list[i])
	}
	return dst
}

// UvarintSize is the length of x's uvarint encoding.
func UvarintSize(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

// StringSize is the length of AppendString's encoding of s.
func StringSize[T ~string | ~[]byte](s T) int { return UvarintSize(uint64(len(s))) + len(s) }

// HeaderSize is the length of AppendHeader's encoding of h.
func HeaderSize(h http.Header) int {
	n := UvarintSize(uint64(len(h)))
	for k, vs := range h {
		n += StringSize(k) + UvarintSize(uint64(len(vs)))
		for _, v := range vs {
			n += StringSize(v)
		}
	}
	return n
}

// Decoder reads a record field by field. After the first failure every
// read returns a zero value, and Err reports that failure.
type Decoder struct {
	b   []byte
	err error
}

// NewDecoder returns a Decoder reading b. What Bytes returns shares b's
// memory; everything else is copied.
func NewDecoder(b []byte) Decoder { return Decoder{b: b} }

// Err returns the first failure, or nil. It does not wrap a package's
// sentinel: the caller wraps it with its own (reqcodec.ErrCorrupt).
func (d *Decoder) Err() error { return d.err }

// Fail records err as the decoder's failure unless one is recorded already,
// and stops reading. Callers use it for what only they can check, such as
// a value out of range.
func (d *Decoder) Fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.b = nil
}

func (d *Decoder) truncated(what string) { d.Fail(errors.New("truncated " + what)) }

// Rest returns the unread input.
func (d *Decoder) Rest() []byte { return d.b }

// End returns Err, or an error if any input is left unread: a record has
// nothing after its last field.
func (d *Decoder) End() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	return d.err
}

// Byte reads one byte.
func (d *Decoder) Byte() byte {
	if len(d.b) < 1 {
		d.truncated("header")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

// Uint64 reads 8 bytes, little-endian: for values, such as float bits,
// that a varint would not shorten.
func (d *Decoder) Uint64() uint64 {
	if len(d.b) < 8 {
		d.truncated("number")
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

// Uvarint reads a uvarint.
func (d *Decoder) Uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.truncated("length")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// Varint reads a zigzag varint, as binary.AppendVarint writes it.
func (d *Decoder) Varint() int64 {
	u := d.Uvarint()
	return int64(u>>1) ^ -int64(u&1)
}

// Count reads an element count. Each element takes at least minSize
// encoded bytes, so a count beyond what the remaining input can hold is
// corrupt; this bounds what a caller allocates for the elements by the
// input's length.
func (d *Decoder) Count(minSize int) int {
	n := d.Uvarint()
	if n > uint64(len(d.b)/max(1, minSize)) {
		d.truncated("list")
		return 0
	}
	return int(n)
}

// Bytes reads a length-prefixed field. The result shares the input's
// memory; copy it to keep it beyond the input's life.
func (d *Decoder) Bytes() []byte {
	n := d.Uvarint()
	if n > uint64(len(d.b)) {
		d.truncated("field")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// String reads a length-prefixed field as a string.
func (d *Decoder) String() string { return string(d.Bytes()) }

// MakeList reads the count that AppendList wrote and returns a slice of
// that many zero elements for the caller to read into, nil for none. Each
// element takes at least minSize encoded bytes (see Count), so the slice
// is allocated once and bounded by the input. (A callback per element,
// like AppendList's, would move the Decoder to the heap.)
func MakeList[T any](d *Decoder, minSize int) []T {
	n := d.Count(minSize)
	if n == 0 {
		return nil
	}
	return make([]T, n)
}

// Header reads what AppendHeader wrote; an empty header decodes as nil.
func (d *Decoder) Header() http.Header {
	n := d.Count(2) // a name's length and its value count
	if n == 0 {
		return nil
	}
	h := make(http.Header, n)
	for range n {
		k := d.String()
		vs := make([]string, d.Count(1))
		for i := range vs {
			vs[i] = d.String()
		}
		h[k] = vs
	}
	return h
}
