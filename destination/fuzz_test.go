package destination_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/task"
)

// fuzzNow is the receiver's clock in the fuzz targets.
var fuzzNow = time.Unix(1_790_000_000, 0)

// carriesMAC is the oracle of Verify, written apart from it: the header
// holds a t= timestamp within tolerance of fuzzNow and a v1= signature
// that is the HMAC-SHA256, under secret, of that timestamp, a dot and body.
func carriesMAC(secret []byte, header string, body []byte) bool {
	var stamps, sigs []string
	for part := range strings.SplitSeq(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			stamps = append(stamps, v)
		case "v1":
			sigs = append(sigs, v)
		}
	}
	for _, ts := range stamps {
		sec, err := strconv.ParseInt(ts, 10, 64)
		if err != nil || sec < fuzzNow.Unix()-int64(destination.DefaultTolerance/time.Second) ||
			sec > fuzzNow.Unix()+int64(destination.DefaultTolerance/time.Second) {
			continue
		}
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(ts + "."))
		m.Write(body)
		want := m.Sum(nil)
		for _, sig := range sigs {
			if got, err := hex.DecodeString(sig); err == nil && bytes.Equal(got, want) {
				return true
			}
		}
	}
	return false
}

// FuzzVerify: Verify never panics, accepts a header only if it carries the
// right MAC of the body with a timestamp in tolerance, always accepts what
// Sign made for a time in tolerance, and rejects it once one hex digit of
// the MAC, one byte of the body, the secret or the timestamp changes.
//
//	go test -run '^$' -fuzz FuzzVerify ./destination/
func FuzzVerify(f *testing.F) {
	key := []byte("0123456789abcdef-fuzz-secret")
	body := []byte(`{"version":"1.0","requestContext":{"requestId":"x"}}`)
	good := destination.Sign(key, fuzzNow, body)
	sig := good[strings.Index(good, "v1=")+3:]
	for _, s := range []struct {
		secret []byte
		header string
		body   []byte
	}{
		{key, good, body},
		{key, good + ",v1=" + strings.Repeat("0", 64), body}, // a later v1 replaces the right one
		{key, "v1=" + sig + ",t=1790000000", body},
		{key, " t=1790000000 , v1=" + sig + " ", body},
		{key, "t=1790000000,v1=" + strings.ToUpper(sig), body},
		{key, "t=+1790000000,v1=" + sig, body},
		{key, "t=01790000000,v1=" + sig, body},
		{key, "t=1790000000,t=1790000001,v1=" + sig, body},
		{key, "t=99999999999999999999,v1=" + sig, body},
		{key, "t=-9223372036854775808,v1=" + sig, body},
		{key, "t=9223372036854775807,v1=" + sig, body},
		{key, "t=1790000000,v1=" + sig[:63] + "g", body},
		{key, "t=1790000000,v1=" + sig + "0", body},
		{key, "t=1790000000,v1=" + sig[:62], body},
		{key, "t=1790000000,v1=", body},
		{key, "t=,v1=", nil},
		{key, "", nil},
		{key, ",,,,=,==,t==,v1==", body},
		{key, "t=1790000000\x00,v1=" + sig, body},
		{nil, destination.Sign(nil, fuzzNow, nil), nil},
		{[]byte{}, destination.Sign([]byte{}, fuzzNow, []byte{0xff}), []byte{0xff}},
		{bytes.Repeat([]byte("k"), 64), destination.Sign(bytes.Repeat([]byte("k"), 64), fuzzNow, body), body},
		{bytes.Repeat([]byte("k"), 100), destination.Sign(bytes.Repeat([]byte("k"), 100), fuzzNow, body), body},
	} {
		f.Add(s.secret, s.header, s.body, int64(0), uint8(0))
	}
	f.Add(key, good, body, int64(destination.DefaultTolerance), uint8(63))
	f.Add(key, good, body, int64(-destination.DefaultTolerance), uint8(200))
	f.Add(key, good, body, int64(destination.DefaultTolerance+time.Second), uint8(7))
	f.Add(key, good, body, int64(math.MinInt64), uint8(255))

	f.Fuzz(func(t *testing.T, secret []byte, header string, body []byte, skew int64, pick uint8) {
		// Any header.
		err := destination.Verify(secret, header, body, 0, fuzzNow)
		if err != nil && !errors.Is(err, destination.ErrSignature) {
			t.Fatalf("Verify(%q) = %v; want an error wrapping ErrSignature", header, err)
		}
		if err == nil && !carriesMAC(secret, header, body) {
			t.Fatalf("Verify accepted %q, which does not carry the body's MAC", header)
		}

		// What Sign makes, at a time up to twice the tolerance away.
		at := fuzzNow.Add(time.Duration(skew % int64(2*destination.DefaultTolerance)))
		signed := destination.Sign(secret, at, body)
		age := fuzzNow.Sub(time.Unix(at.Unix(), 0)) // Sign sends whole seconds
		inTolerance := age <= destination.DefaultTolerance && age >= -destination.DefaultTolerance
		longEnough := len(secret) >= destination.MinSecret
		if err := destination.Verify(secret, signed, body, 0, fuzzNow); (err == nil) != (inTolerance && longEnough) {
			t.Fatalf("Verify(Sign at %v) with a %d-byte secret = %v; in tolerance: %v", at, len(secret), err, inTolerance)
		}
		if !inTolerance || !longEnough {
			return
		}
		reject := func(what, header string, secret, body []byte) {
			t.Helper()
			if err := destination.Verify(secret, header, body, 0, fuzzNow); !errors.Is(err, destination.ErrSignature) {
				t.Fatalf("%s: Verify(%q) = %v; want an error wrapping ErrSignature", what, header, err)
			}
		}
		// One hex digit of the MAC.
		const digits = "0123456789abcdef"
		i := strings.Index(signed, "v1=") + 3 + int(pick)%64
		d := digits[(strings.IndexByte(digits, signed[i])+1+int(pick)%15)%16]
		reject("one hex digit changed", signed[:i]+string(d)+signed[i+1:], secret, body)
		// One byte of the body, or one more.
		if len(body) > 0 {
			changed := bytes.Clone(body)
			changed[int(pick)%len(body)] ^= 1 << (pick % 8)
			reject("one body byte changed", signed, secret, changed)
		}
		reject("a byte appended to the body", signed, secret, append(bytes.Clone(body), pick))
		// The secret. (A zero byte appended to a key of at most 64 bytes
		// would not count: HMAC pads the key with zeros.)
		reject("another secret", signed, append(bytes.Clone(secret), 'x'), body)
		if len(secret) > 0 {
			changed := bytes.Clone(secret)
			changed[int(pick)%len(secret)] ^= 0x80
			reject("one secret byte changed", signed, changed, body)
		}
		// The timestamp, by a second, with the MAC kept.
		ts := strconv.FormatInt(at.Unix(), 10)
		reject("timestamp moved", strings.Replace(signed, "t="+ts, "t="+strconv.FormatInt(at.Unix()+1, 10), 1), secret, body)
	})
}

// TestVerifyEveryDigit: a signature that differs from the right one in
// any one hex digit, to any other digit, is refused.
func TestVerifyEveryDigit(t *testing.T) {
	t.Parallel()
	key := []byte("0123456789abcdef-test-secret")
	body := []byte(`{"version":"1.0"}`)
	good := destination.Sign(key, fuzzNow, body)
	start := strings.Index(good, "v1=") + 3
	if err := destination.Verify(key, good, body, 0, fuzzNow); err != nil {
		t.Fatalf("Verify(good) = %v", err)
	}
	for i := start; i < len(good); i++ {
		for _, d := range "0123456789abcdefABCDEF" {
			if strings.EqualFold(string(d), good[i:i+1]) {
				continue
			}
			h := good[:i] + string(d) + good[i+1:]
			if err := destination.Verify(key, h, body, 0, fuzzNow); !errors.Is(err, destination.ErrSignature) {
				t.Fatalf("Verify(%q) = %v; want an error wrapping ErrSignature", h, err)
			}
		}
	}
}

// TestVerifyComparesInConstantTime reads webhook.go: Verify compares MACs
// with hmac.Equal and with nothing that returns at the first differing
// byte. No timing measurement could show this reliably; the source does.
func TestVerifyComparesInConstantTime(t *testing.T) {
	t.Parallel()
	file, err := parser.ParseFile(token.NewFileSet(), "webhook.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var verify *ast.FuncDecl
	for _, d := range file.Decls {
		if fn, ok := d.(*ast.FuncDecl); ok && fn.Name.Name == "Verify" && fn.Recv == nil {
			verify = fn
		}
	}
	if verify == nil {
		t.Fatal("no func Verify in webhook.go")
	}
	calls := map[string]int{}
	ast.Inspect(verify.Body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			if sel, ok := n.Fun.(*ast.SelectorExpr); ok {
				if pkg, ok := sel.X.(*ast.Ident); ok {
					calls[pkg.Name+"."+sel.Sel.Name]++
				}
			}
		case *ast.BinaryExpr:
			if n.Op == token.EQL || n.Op == token.NEQ {
				for _, side := range []ast.Expr{n.X, n.Y} {
					if id, ok := side.(*ast.Ident); ok && (id.Name == "got" || id.Name == "sig") {
						t.Errorf("Verify compares %s with %s", id.Name, n.Op)
					}
				}
			}
		}
		return true
	})
	if calls["hmac.Equal"] == 0 {
		t.Error("Verify does not call hmac.Equal")
	}
	for _, c := range []string{"bytes.Equal", "bytes.Compare", "strings.EqualFold", "strings.Compare", "reflect.DeepEqual", "slices.Equal"} {
		if calls[c] > 0 {
			t.Errorf("Verify calls %s, which is not constant-time", c)
		}
	}
}

// FuzzRecordJSON: the record of any finished task survives the trip
// through JSON, and through a signed webhook POST and VerifyRequest: the
// same fields, its payloads giving back the exact bytes, and the same
// encoding when encoded again.
//
//	go test -run '^$' -fuzz FuzzRecordJSON ./destination/
func FuzzRecordJSON(f *testing.F) {
	f.Add("01ARZ3NDEKTSV4RRFFQ69G5FAV", "work", "", uint8(0), 1, 200, []byte("req"), []byte("res"), true, int64(1_790_000_000_535_358_910), int16(0))
	f.Add("job_a", "video.transcode", "boom", uint8(1), 3, 500, []byte{0xff, 0xfe}, []byte("héllo 世界"), true, int64(0), int16(120))
	f.Add("x", "t", "not run within MaxAge 1h0m0s", uint8(2), 0, 0, []byte(nil), []byte(nil), false, int64(-1), int16(-330))
	f.Add("x", "t", "a\x00b\"<>&\u2028\u2029\\", uint8(3), -1, -1, []byte("\u2028<script>"), []byte{0xc3, 0x28}, true, int64(math.MaxInt64), int16(1439))
	f.Add("x", "t", "\xff\xfe", uint8(4), math.MaxInt, math.MinInt, bytes.Repeat([]byte{0x80}, 100), []byte{0xed, 0xa0, 0x80}, true, int64(math.MinInt64), int16(-1439))
	f.Add("", "", "", uint8(5), 2, 404, []byte(""), []byte(""), true, int64(1), int16(1))
	key := []byte("0123456789abcdef-fuzz-secret")
	f.Fuzz(func(t *testing.T, id, target, lastError string, status uint8, attempts, code int, reqBody, resBody []byte,
		responded bool, finishedNs int64, offsetMin int16,
	) {
		// Strings come from stored records, which hold UTF-8 text.
		valid := func(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
		zone := time.FixedZone("", int(offsetMin)%(24*60)*60)
		tk := &task.Task{
			ID:         valid(id),
			Target:     valid(target),
			Status:     task.Statuses[int(status)%len(task.Statuses)],
			Attempts:   attempts,
			LastError:  valid(lastError),
			FinishedAt: time.Unix(0, finishedNs).In(zone),
			Request:    task.Request{Body: reqBody},
		}
		if responded {
			tk.Response = &task.Response{StatusCode: code, Body: resBody}
		}
		cond, ok := destination.ConditionOf(tk)
		if !ok {
			cond = destination.Invalid
		}
		rec := destination.NewRecord(tk, cond)
		j, err := json.Marshal(rec)
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", rec, err)
		}
		var back destination.Record
		if err := json.Unmarshal(j, &back); err != nil {
			t.Fatalf("Unmarshal(%s): %v", j, err)
		}
		checkSameRecord(t, back, rec)
		if j2, _ := json.Marshal(back); !bytes.Equal(j2, j) {
			t.Fatalf("encoded again as\n%s\nnot\n%s", j2, j)
		}
		wantRes := resBody
		if !responded {
			wantRes = nil
		}
		for _, p := range []struct {
			payload, enc string
			want         []byte
		}{
			{back.RequestPayload, back.RequestPayloadEncoding, reqBody},
			{back.ResponsePayload, back.ResponsePayloadEncoding, wantRes},
		} {
			got := []byte(p.payload)
			switch p.enc {
			case "":
			case "base64":
				if got, err = base64.StdEncoding.DecodeString(p.payload); err != nil {
					t.Fatalf("payload %q: %v", p.payload, err)
				}
			default:
				t.Fatalf("payload encoding %q", p.enc)
			}
			if !bytes.Equal(got, p.want) {
				t.Fatalf("payload %q (%q) gives %x; want %x", p.payload, p.enc, got, p.want)
			}
		}

		// The same through the wire: signed, POSTed, verified, decoded.
		r := httptest.NewRequest(http.MethodPost, "/hook", bytes.NewReader(j))
		r.Header.Set(destination.HeaderSignature, destination.Sign(key, time.Now(), j))
		got, err := destination.VerifyRequest(r, key, 0)
		if err != nil {
			t.Fatalf("VerifyRequest: %v", err)
		}
		checkSameRecord(t, got, rec)
	})
}

// checkSameRecord fails unless got is want, its timestamp the same instant.
func checkSameRecord(t *testing.T, got, want destination.Record) {
	t.Helper()
	if !got.Timestamp.Equal(want.Timestamp) {
		t.Fatalf("timestamp %v; want %v", got.Timestamp, want.Timestamp)
	}
	got.Timestamp = want.Timestamp
	if got != want {
		t.Fatalf("decoded\n%+v\nwant\n%+v", got, want)
	}
}
