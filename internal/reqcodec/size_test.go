package reqcodec_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/offload-go/offload/internal/reqcodec"
)

func TestSizeIsEncodedLength(t *testing.T) {
	long := strings.Repeat("v", 300)
	for _, r := range []*reqcodec.Request{
		{},
		{Method: "GET", RequestURI: "/", Proto: "HTTP/1.1"},
		{
			Method: "POST", RequestURI: "/a?" + long, Proto: "HTTP/2.0", Host: "h", RemoteAddr: "1.2.3.4:5",
			Header:     http.Header{"A": {"1", long}, "B": nil, long: {""}},
			Pattern:    "POST /a/{x}",
			PathValues: []reqcodec.KV{{Key: "x", Value: long}},
			Values:     []reqcodec.KV{{Key: "k", Value: "v"}, {}},
			BodySize:   1 << 40,
			Body:       make([]byte, 20000),
		},
		{Blob: "0123456789abcdef0123456789abcdef", BodySize: 1 << 30},
	} {
		if got, want := reqcodec.Size(r), len(reqcodec.Append(nil, r)); got != want {
			t.Errorf("Size = %d, encoding has %d bytes (%+v)", got, want, r.Header)
		}
	}
}
