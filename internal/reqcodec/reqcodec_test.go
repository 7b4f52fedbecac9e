package reqcodec_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand"
	"net/http"
	"reflect"
	"testing"
	"testing/quick"

	"go.uber.org/goleak"

	"github.com/offload-go/offload/internal/reqcodec"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func sample() *reqcodec.Request {
	return &reqcodec.Request{
		Method:     http.MethodPost,
		RequestURI: "/videos/clip%201/transcode?preset=720p&x=%E2%9C%93",
		Proto:      "HTTP/1.1",
		Host:       "api.example.com:8443",
		RemoteAddr: "[2001:db8::1]:53211",
		Header: http.Header{
			"Content-Type": {"application/json"},
			"X-Multi":      {"a", "", "c"},
			"X-Empty":      {},
		},
		Pattern:    "POST /videos/{name}/transcode",
		PathValues: []reqcodec.KV{{Key: "name", Value: "clip 1"}},
		Values:     []reqcodec.KV{{Key: "user", Value: "alice"}, {Key: "tenant", Value: ""}},
		BodySize:   13,
		Body:       []byte(`{"fps": 30}` + "\x00\xff"),
	}
}

// randomRequest makes a request whose every field may be empty, nil, long
// or binary.
func randomRequest(r *rand.Rand) *reqcodec.Request {
	str := func() string {
		b := make([]byte, r.Intn(3)*r.Intn(40))
		r.Read(b)
		return string(b)
	}
	kvs := func() []reqcodec.KV {
		n := r.Intn(4)
		if n == 0 {
			return nil
		}
		kvs := make([]reqcodec.KV, n)
		for i := range kvs {
			kvs[i] = reqcodec.KV{Key: str(), Value: str()}
		}
		return kvs
	}
	req := &reqcodec.Request{
		Method: str(), RequestURI: str(), Proto: str(), Host: str(), RemoteAddr: str(),
		Pattern: str(), Blob: str(), PathValues: kvs(), Values: kvs(),
		BodySize: r.Int63n(1 << 40),
	}
	if n := r.Intn(4); n > 0 {
		req.Header = http.Header{}
		for range n {
			vs := make([]string, r.Intn(3))
			for i := range vs {
				vs[i] = str()
			}
			req.Header[str()] = vs
		}
	}
	if n := r.Intn(3) * r.Intn(5000); n > 0 {
		req.Body = make([]byte, n)
		r.Read(req.Body)
	}
	return req
}

// equal compares requests the way the codec promises to keep them: an
// empty header, list or body may come back nil.
func equal(a, b *reqcodec.Request) bool {
	norm := func(r *reqcodec.Request) reqcodec.Request {
		c := *r
		if len(c.Header) == 0 {
			c.Header = nil
		} else {
			h := http.Header{}
			for k, vs := range c.Header {
				h[k] = append([]string{}, vs...)
			}
			c.Header = h
		}
		if len(c.PathValues) == 0 {
			c.PathValues = nil
		}
		if len(c.Values) == 0 {
			c.Values = nil
		}
		if len(c.Body) == 0 {
			c.Body = nil
		}
		return c
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for _, req := range []*reqcodec.Request{sample(), {}, {BodySize: 1 << 62, Blob: "0123456789abcdef0123456789abcdef"}} {
		got, err := reqcodec.Decode(reqcodec.Append(nil, req))
		if err != nil {
			t.Fatalf("Decode(Append(%+v)): %v", req, err)
		}
		if !equal(got, req) {
			t.Errorf("round trip:\n got  %+v\n want %+v", got, req)
		}
	}
}

func TestRoundTripProperty(t *testing.T) {
	t.Parallel()
	cfg := &quick.Config{
		MaxCount: 2000,
		Values: func(args []reflect.Value, r *rand.Rand) {
			args[0] = reflect.ValueOf(randomRequest(r))
			prefix := make([]byte, r.Intn(8))
			r.Read(prefix)
			args[1] = reflect.ValueOf(prefix)
		},
	}
	// Append appends: it keeps what dst held, and the encoding after it
	// decodes to the request.
	prop := func(req *reqcodec.Request, prefix []byte) bool {
		b := reqcodec.Append(bytes.Clone(prefix), req)
		if !bytes.HasPrefix(b, prefix) {
			return false
		}
		got, err := reqcodec.Decode(b[len(prefix):])
		return err == nil && equal(got, req)
	}
	if err := quick.Check(prop, cfg); err != nil {
		t.Error(err)
	}
}

// TestDecodeCopies: the result shares no memory with the input, which the
// queue relies on (bbolt's values live only as long as a transaction).
func TestDecodeCopies(t *testing.T) {
	t.Parallel()
	b := reqcodec.Append(nil, sample())
	got, err := reqcodec.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0xAA
	}
	if !equal(got, sample()) {
		t.Errorf("decoded request changed with its input: %+v", got)
	}
}

func TestDecodeTruncated(t *testing.T) {
	t.Parallel()
	for _, req := range []*reqcodec.Request{sample(), {}} {
		b := reqcodec.Append(nil, req)
		for n := range len(b) {
			if _, err := reqcodec.Decode(b[:n]); !errors.Is(err, reqcodec.ErrCorrupt) {
				t.Fatalf("Decode of %d of %d bytes: err = %v, want ErrCorrupt", n, len(b), err)
			}
		}
	}
}

func TestDecodeGarbage(t *testing.T) {
	t.Parallel()
	valid := reqcodec.Append(nil, sample())
	uv := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }
	// An empty request's encoding: version, 7 empty strings, no header,
	// no path values, no values, body size 0, empty body.
	empty := reqcodec.Append(nil, &reqcodec.Request{})
	if want := append([]byte{1}, make([]byte, 12)...); !bytes.Equal(empty, want) {
		t.Fatalf("empty request encodes as %x, want %x", empty, want)
	}
	withHeaderCount := func(n uint64) []byte {
		b := append([]byte{1}, make([]byte, 7)...)
		return append(b, uv(n)...)
	}
	negativeSize := append(append([]byte{1}, make([]byte, 10)...), uv(1<<63)...)
	negativeSize = append(negativeSize, 0)

	for _, c := range []struct {
		name string
		b    []byte
	}{
		{"nil", nil},
		{"version 0", append([]byte{0}, valid[1:]...)},
		{"version 2", append([]byte{2}, valid[1:]...)},
		{"trailing byte", append(bytes.Clone(valid), 0)},
		{"trailing garbage", append(bytes.Clone(valid), "garbage"...)},
		{"string longer than the input", append([]byte{1}, uv(1<<20)...)},
		{"huge string length", append([]byte{1}, uv(1<<63)...)},
		{"overlong varint", append([]byte{1}, bytes.Repeat([]byte{0xff}, 11)...)},
		{"header count beyond the input", withHeaderCount(1 << 40)},
		{"header count of 1 with nothing after", withHeaderCount(1)},
		{"negative body size", negativeSize},
		{"all 0xff", bytes.Repeat([]byte{0xff}, 64)},
	} {
		if _, err := reqcodec.Decode(c.b); !errors.Is(err, reqcodec.ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", c.name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(reqcodec.Append(nil, sample()))
	f.Add(reqcodec.Append(nil, &reqcodec.Request{}))
	f.Add(reqcodec.Append(nil, &reqcodec.Request{Blob: "0123456789abcdef0123456789abcdef", BodySize: 1 << 30}))
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	r := rand.New(rand.NewSource(1))
	for range 8 {
		f.Add(reqcodec.Append(nil, randomRequest(r)))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := reqcodec.Decode(b)
		if err != nil {
			if req != nil {
				t.Fatalf("Decode returned a request and an error: %v", err)
			}
			if !errors.Is(err, reqcodec.ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			return
		}
		again, err := reqcodec.Decode(reqcodec.Append(nil, req))
		if err != nil {
			t.Fatalf("re-encoding of a decoded request does not decode: %v", err)
		}
		if !equal(again, req) {
			t.Fatalf("re-encoded request differs:\n got  %+v\n want %+v", again, req)
		}
	})
}
