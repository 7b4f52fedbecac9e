package wire_test

import (
	"encoding/binary"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/offload-go/offload/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func ExampleDecoder() {
	b := wire.AppendString([]byte{1}, "hello")
	b = binary.AppendVarint(b, -42)
	b = wire.AppendHeader(b, http.Header{"Accept": {"text/plain"}})

	d := wire.NewDecoder(b)
	fmt.Println(d.Byte(), d.String(), d.Varint(), d.Header(), d.End())

	d = wire.NewDecoder(b[1:4]) // the string, cut
	fmt.Printf("%q %v\n", d.String(), d.Err())
	// Output:
	// 1 hello -42 map[Accept:[text/plain]] <nil>
	// "" truncated field
}

func TestSizes(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("v", 300)
	for _, x := range []uint64{0, 1, 127, 128, 1<<14 - 1, 1 << 14, 1<<63 - 1, 1 << 63, 1<<64 - 1} {
		if got, want := wire.UvarintSize(x), len(binary.AppendUvarint(nil, x)); got != want {
			t.Errorf("UvarintSize(%d) = %d, want %d", x, got, want)
		}
	}
	for _, s := range []string{"", "a", long} {
		if got, want := wire.StringSize(s), len(wire.AppendString(nil, s)); got != want {
			t.Errorf("StringSize of %d bytes = %d, want %d", len(s), got, want)
		}
	}
	for _, h := range []http.Header{nil, {}, {"A": {"1", long}, "B": nil, long: {""}}} {
		if got, want := wire.HeaderSize(h), len(wire.AppendHeader(nil, h)); got != want {
			t.Errorf("HeaderSize = %d, encoding has %d bytes", got, want)
		}
	}
}

// TestDecoderSticky: after a failure every read is a zero value, however
// much input is left, and the first failure is the one reported.
func TestDecoderSticky(t *testing.T) {
	t.Parallel()
	b := binary.AppendUvarint(nil, 1<<40) // a count no input of this size holds
	b = append(b, wire.AppendString(nil, "after")...)
	d := wire.NewDecoder(b)
	if n := d.Count(1); n != 0 || d.Err() == nil {
		t.Fatalf("Count = %d, %v; want 0 and an error", n, d.Err())
	}
	first := d.Err()
	if s, v, u := d.String(), d.Varint(), d.Uint64(); s != "" || v != 0 || u != 0 || d.Header() != nil {
		t.Errorf("reads after a failure = %q %d %d", s, v, u)
	}
	if d.End() != first || len(d.Rest()) != 0 {
		t.Errorf("End = %v, Rest = %x; want the first failure %v and nothing", d.End(), d.Rest(), first)
	}
}

// TestCountMinSize: a count is checked against how many elements of the
// given minimum size the rest of the input can hold, which bounds what a
// caller allocates for them.
func TestCountMinSize(t *testing.T) {
	t.Parallel()
	rest := make([]byte, 20)
	for _, c := range []struct {
		n, minSize int
		ok         bool
	}{
		{20, 1, true}, {21, 1, false}, {5, 4, true}, {6, 4, false}, {0, 8, true},
	} {
		d := wire.NewDecoder(append(binary.AppendUvarint(nil, uint64(c.n)), rest...))
		got := d.Count(c.minSize)
		if ok := d.Err() == nil; ok != c.ok || (ok && got != c.n) {
			t.Errorf("Count(%d) of %d with 20 bytes left = %d, %v; want ok %v", c.minSize, c.n, got, d.Err(), c.ok)
		}
	}
}
