package queue_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/oklog/ulid/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/internal/reqcodec"
	"github.com/offload-go/offload/internal/testutil"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/queue/queuetest"
	"github.com/offload-go/offload/task"
)

// secret is the marker that the at-rest tests put in every sealed part of
// a task and then look for in the files.
const secret = "S3CRET-marker-5b1e"

// sealedBlobMagic and blobSegment are the sealed blob format documented in
// seal.go, which the tamper tests take apart.
const (
	sealedBlobMagic = "offload/sealed-blob/1\n"
	blobSegment     = 64 << 10
)

func testKey(id string) []byte {
	k := sha256.Sum256([]byte("offload test key " + id))
	return k[:]
}

// newSealer returns an AESGCM sealing with current and opening with ids
// (and current), each with its testKey.
func newSealer(t testing.TB, current string, ids ...string) *queue.AESGCM {
	t.Helper()
	keys := map[string][]byte{current: testKey(current)}
	for _, id := range ids {
		keys[id] = testKey(id)
	}
	a, err := queue.NewAESGCM(current, keys)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestNewAESGCM(t *testing.T) {
	t.Parallel()
	k := testKey("k")
	tests := []struct {
		name    string
		current string
		keys    map[string][]byte
		want    string // in the error; "" for success
	}{
		{"one key", "k", map[string][]byte{"k": k}, ""},
		{"rotation", "new", map[string][]byte{"old": testKey("old"), "new": k}, ""},
		{"no keys", "k", nil, "not among the keys"},
		{"current missing", "k2", map[string][]byte{"k": k}, "not among the keys"},
		{"AES-128 key", "k", map[string][]byte{"k": k[:16]}, "16 bytes, want 32"},
		{"long key", "k", map[string][]byte{"k": append(k, 0)}, "33 bytes, want 32"},
		{"empty key ID", "", map[string][]byte{"": k}, "1 to 255 bytes"},
		{"long key ID", strings.Repeat("x", 256), map[string][]byte{strings.Repeat("x", 256): k}, "1 to 255 bytes"},
		{"longest key ID", strings.Repeat("x", 255), map[string][]byte{strings.Repeat("x", 255): k}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := queue.NewAESGCM(tt.current, tt.keys)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("NewAESGCM: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("NewAESGCM error = %v, want one saying %q", err, tt.want)
			}
		})
	}
}

func TestAESGCM(t *testing.T) {
	t.Parallel()
	a := newSealer(t, "k1")
	plain, ad := []byte("a request "+secret), []byte("task key")
	sealed, err := a.Seal(nil, plain, ad)
	if err != nil {
		t.Fatal(err)
	}
	// version | key ID length | key ID | nonce | ciphertext and tag
	if sealed[0] != 1 || sealed[1] != 2 || string(sealed[2:4]) != "k1" || len(sealed) != 4+12+len(plain)+16 {
		t.Fatalf("sealed = %x: not version 1, key ID k1, 12-byte nonce, ciphertext, 16-byte tag", sealed)
	}
	if bytes.Contains(sealed, []byte(secret)) {
		t.Fatal("sealed output contains the plaintext")
	}
	again, _ := a.Seal(nil, plain, ad)
	if bytes.Equal(again[4:16], sealed[4:16]) {
		t.Error("two seals used the same nonce")
	}
	prefix := []byte("prefix")
	out, err := a.Seal(prefix, plain, ad)
	if err != nil || !bytes.HasPrefix(out, prefix) {
		t.Errorf("Seal does not append to dst: %q, %v", out, err)
	}
	got, err := a.Open([]byte("dst:"), sealed, ad)
	if err != nil || string(got) != "dst:"+string(plain) {
		t.Fatalf("Open = %q, %v; want the plaintext appended to dst", got, err)
	}

	wrongKey, _ := queue.NewAESGCM("k1", map[string][]byte{"k1": testKey("other")})
	fails := []struct {
		name   string
		s      queue.Sealer
		sealed []byte
		ad     []byte
		want   string
	}{
		{"other additional data", a, sealed, []byte("task kez"), "authentication failed"},
		{"no additional data", a, sealed, nil, "authentication failed"},
		{"wrong key under the ID", wrongKey, sealed, ad, "authentication failed"},
		{"unknown key ID", newSealer(t, "k2"), sealed, ad, `unknown key ID "k1"`},
		{"empty", a, nil, ad, "not AES-GCM"},
		{"other version", a, append([]byte{2}, sealed[1:]...), ad, "not AES-GCM"},
		{"cut in the key ID", a, sealed[:3], ad, "truncated key ID"},
		{"cut in the nonce", a, sealed[:10], ad, "truncated ciphertext"},
		{"tag cut", a, sealed[:len(sealed)-1], ad, "authentication failed"},
		{"extended", a, append(bytes.Clone(sealed), 0), ad, "authentication failed"},
	}
	for _, f := range fails {
		if _, err := f.s.Open(nil, f.sealed, f.ad); !errors.Is(err, queue.ErrSealed) || !strings.Contains(err.Error(), f.want) {
			t.Errorf("%s: Open error = %v, want ErrSealed saying %q", f.name, err, f.want)
		}
	}
	for i := 4; i < len(sealed); i++ { // every bit after the key ID
		for bit := range 8 {
			c := bytes.Clone(sealed)
			c[i] ^= 1 << bit
			if _, err := a.Open(nil, c, ad); !errors.Is(err, queue.ErrSealed) {
				t.Fatalf("byte %d bit %d flipped: Open error = %v, want ErrSealed", i, bit, err)
			}
		}
	}
}

// FuzzOpen: Open never panics, and every failure wraps ErrSealed.
func FuzzOpen(f *testing.F) {
	a := newSealer(f, "k1", "k2")
	for _, p := range []string{"", "x", secret, strings.Repeat("body", 100)} {
		s, _ := a.Seal(nil, []byte(p), []byte("ad"))
		f.Add(s, []byte("ad"))
		f.Add(s[:len(s)/2], []byte("ad"))
		f.Add(s, []byte(nil))
	}
	f.Add([]byte{1, 0}, []byte(nil))
	f.Add([]byte{1, 255, 'k'}, []byte(nil))
	f.Fuzz(func(t *testing.T, sealed, ad []byte) {
		out, err := a.Open(nil, sealed, ad)
		if err != nil && !errors.Is(err, queue.ErrSealed) {
			t.Fatalf("Open error %v does not wrap ErrSealed", err)
		}
		if err == nil && len(out) != len(sealed)-2-int(sealed[1])-28 {
			t.Fatalf("Open returned %d bytes from %d sealed", len(out), len(sealed))
		}
	})
}

// keyLog is a Sealer that counts the key IDs of what it seals and opens.
type keyLog struct {
	queue.Sealer
	mu             sync.Mutex
	sealed, opened map[string]int
}

var _ queue.Sealer = (*keyLog)(nil)

func newKeyLog(s queue.Sealer) *keyLog {
	return &keyLog{Sealer: s, sealed: map[string]int{}, opened: map[string]int{}}
}

func keyID(b []byte) string {
	if len(b) < 2 || len(b) < 2+int(b[1]) {
		return ""
	}
	return string(b[2 : 2+b[1]])
}

func (k *keyLog) Seal(dst, plaintext, ad []byte) ([]byte, error) {
	out, err := k.Sealer.Seal(dst, plaintext, ad)
	if err == nil {
		k.mu.Lock()
		k.sealed[keyID(out[len(dst):])]++
		k.mu.Unlock()
	}
	return out, err
}

func (k *keyLog) Open(dst, sealed, ad []byte) ([]byte, error) {
	k.mu.Lock()
	k.opened[keyID(sealed)]++
	k.mu.Unlock()
	return k.Sealer.Open(dst, sealed, ad)
}

func (k *keyLog) counts() (sealed, opened map[string]int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.sealed, k.opened
}

// secretRequest is a request that carries the secret in every part that
// is sealed.
func secretRequest(body []byte) *reqcodec.Request {
	return &reqcodec.Request{
		Method:     http.MethodPut,
		RequestURI: "/files/" + secret + "?q=" + secret,
		Proto:      "HTTP/1.1",
		Host:       "h-" + secret + ".example",
		RemoteAddr: "192.0.2.1:1234",
		Header:     http.Header{"Authorization": {"Bearer " + secret}, "X-" + secret: {"v"}},
		Pattern:    "PUT /files/{" + secret + "}",
		PathValues: []reqcodec.KV{{Key: secret, Value: secret}},
		Values:     []reqcodec.KV{{Key: "user", Value: secret}},
		BodySize:   int64(len(body)),
		Body:       body,
	}
}

func secretResponse() *task.Response {
	return &task.Response{
		StatusCode: http.StatusCreated,
		Header:     http.Header{"Set-Cookie": {"s=" + secret}},
		Body:       []byte("made " + secret),
		BodySize:   int64(len("made " + secret)),
	}
}

// writeBlob stores body as a blob, written in pieces of random sizes up to
// max, and returns its name.
func writeBlob(t testing.TB, q *queue.Queue, body []byte, max int) string {
	t.Helper()
	b, err := q.CreateBlob()
	if err != nil {
		t.Fatal(err)
	}
	for rest := body; len(rest) > 0; {
		n := min(len(rest), 1+mrand.IntN(max))
		if k, err := b.Write(rest[:n]); err != nil || k != n {
			t.Fatalf("blob Write = %d, %v; want %d", k, err, n)
		}
		rest = rest[n:]
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Name()
}

func readBody(t testing.TB, q *queue.Queue, l *queue.Lease) ([]byte, error) {
	t.Helper()
	rc, err := q.OpenBody(l)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func leaseByID(t *testing.T, q *queue.Queue, target string) map[string]*queue.Lease {
	t.Helper()
	out := map[string]*queue.Lease{}
	for _, l := range leaseAll(t, q, time.Now(), target) {
		out[l.ID] = l
	}
	return out
}

func finishWith(t *testing.T, q *queue.Queue, l *queue.Lease, out queue.Outcome) {
	t.Helper()
	if _, err := q.Finish(ctx, l, out); err != nil {
		t.Fatal(err)
	}
}

// TestSealedRoundTrip stores two tasks (an inline body and a blob body)
// whose request and response carry a marker, reads them back through
// every path, closes the queue and looks for the marker in its files: with
// a Sealer it is in none of them; without one (the control) it is in the
// database and in the blob.
func TestSealedRoundTrip(t *testing.T) {
	t.Parallel()
	for _, sealed := range []bool{true, false} {
		t.Run(fmt.Sprintf("sealed=%v", sealed), func(t *testing.T) {
			t.Parallel()
			var sl queue.Sealer
			if sealed {
				sl = newSealer(t, "k1")
			}
			dir := t.TempDir()
			q := openAt(t, filepath.Join(dir, "offload.db"), &queue.Options{Sealer: sl})

			inline := secretRequest([]byte("inline body " + secret))
			blobBody := bytes.Repeat([]byte("blob body "+secret+" "), 30_000) // 870 KB: 14 segments
			blobReq := secretRequest(nil)
			blobReq.Blob, blobReq.BodySize = writeBlob(t, q, blobBody, 100<<10), int64(len(blobBody))
			if got := strings.HasSuffix(blobReq.Blob, ".sealed"); got != sealed {
				t.Errorf("blob name %q: sealed suffix %v, want %v", blobReq.Blob, got, sealed)
			}
			idInline := enqueue(t, q, &queue.Job{Target: "rt", Request: inline, IdempotencyKey: "idem-1"})
			idBlob := enqueue(t, q, &queue.Job{Target: "rt", ID: "caller-chosen", Request: blobReq})

			// GetTask before the first attempt: the request summary and the
			// inline body.
			tk := status(t, q, idInline)
			want := task.Request{
				Method: inline.Method, URL: inline.RequestURI, Host: inline.Host, RemoteAddr: inline.RemoteAddr,
				Header: inline.Header, BodySize: inline.BodySize, Body: inline.Body, Values: map[string]string{"user": secret},
			}
			if !reflect.DeepEqual(tk.Request, want) {
				t.Errorf("GetTask request = %+v\nwant %+v", tk.Request, want)
			}

			leases := leaseByID(t, q, "rt")
			for id, req := range map[string]*reqcodec.Request{idInline: inline, idBlob: blobReq} {
				l := leases[id]
				if l == nil {
					t.Fatalf("task %s not leased", id)
				}
				if l.Corrupt != nil || !reflect.DeepEqual(l.Request, req) {
					t.Fatalf("leased request of %s = %+v, %v\nwant %+v", id, l.Request, l.Corrupt, req)
				}
			}
			if got, err := readBody(t, q, leases[idInline]); err != nil || !bytes.Equal(got, inline.Body) {
				t.Errorf("inline body = %q, %v", got, err)
			}
			if got, err := readBody(t, q, leases[idBlob]); err != nil || !bytes.Equal(got, blobBody) {
				t.Errorf("blob body: %d bytes, %v; want the %d written", len(got), err, len(blobBody))
			}

			resp := secretResponse()
			finishWith(t, q, leases[idInline], queue.Outcome{Status: task.Succeeded, Response: resp})
			finishWith(t, q, leases[idBlob], queue.Outcome{Status: task.Retrying, Response: resp, ReadyAt: time.Now()})
			if tk := status(t, q, idInline); !reflect.DeepEqual(tk.Response, resp) {
				t.Errorf("GetTask response = %+v, want %+v", tk.Response, resp)
			}
			page, err := task.List(ctx, q, task.Filter{Target: "rt"})
			if err != nil {
				t.Fatal(err)
			}
			for _, tk := range page.Tasks {
				if tk.Request.URL != inline.RequestURI || !reflect.DeepEqual(tk.Response, resp) || tk.Request.Body != nil {
					t.Errorf("listed %s: request %+v, response %+v", tk.ID, tk.Request, tk.Response)
				}
			}
			// A control op returns the task read again, response and all.
			if tk, err := task.Stop(ctx, q, idBlob); err != nil || !reflect.DeepEqual(tk.Response, resp) {
				t.Errorf("Stop = %+v, %v", tk, err)
			}
			if err := q.Check(); err != nil {
				t.Error(err)
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}

			found := filesContaining(t, dir, []byte(secret))
			if sealed && len(found) > 0 {
				t.Errorf("the marker is stored in plain text in %v", found)
			}
			if !sealed && len(found) != 2 {
				t.Errorf("control: the marker is in %v, want the database and the blob", found)
			}
		})
	}
}

// filesContaining returns the files under dir whose bytes contain marker.
func filesContaining(t *testing.T, dir string, marker []byte) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, marker) {
			found = append(found, filepath.Base(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestSealKeyRotation seals with k1, rotates to k2 keeping k1 (old records,
// blobs and responses still open; new ones are sealed with k2), then drops
// k1 (its records fail with ErrSealed, naming the key).
func TestSealKeyRotation(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "offload.db")
	k1 := newKeyLog(newSealer(t, "k1"))
	q := openAt(t, path, &queue.Options{Sealer: k1})
	body := bytes.Repeat([]byte("old blob "), 20_000)
	oldBlob := secretRequest(nil)
	oldBlob.Blob, oldBlob.BodySize = writeBlob(t, q, body, 64<<10), int64(len(body))
	idOld := enqueue(t, q, &queue.Job{Target: "old", Request: oldBlob})
	idOld2 := enqueue(t, q, &queue.Job{Target: "old2", Request: secretRequest([]byte("old 2"))})
	idDone := enqueue(t, q, &queue.Job{Target: "done", Request: secretRequest([]byte("done"))})
	l := leaseAll(t, q, time.Now(), "done")[0]
	finishWith(t, q, l, queue.Outcome{Status: task.Succeeded, Response: secretResponse()})
	if sealed, _ := k1.counts(); len(sealed) != 1 || sealed["k1"] == 0 {
		t.Fatalf("sealed with %v, want k1 only", sealed)
	}

	k2 := newKeyLog(newSealer(t, "k2", "k1"))
	q = reopen(t, q, &queue.Options{Sealer: k2})
	if tk := status(t, q, idDone); !reflect.DeepEqual(tk.Response, secretResponse()) {
		t.Errorf("response sealed with k1, read after rotation: %+v", tk.Response)
	}
	newBody := bytes.Repeat([]byte("new blob "), 20_000)
	newBlob := secretRequest(nil)
	newBlob.Blob, newBlob.BodySize = writeBlob(t, q, newBody, 64<<10), int64(len(newBody))
	idNew := enqueue(t, q, &queue.Job{Target: "new", Request: newBlob})
	if sealed, opened := k2.counts(); len(sealed) != 1 || sealed["k2"] == 0 || opened["k1"] == 0 {
		t.Fatalf("after rotation: sealed with %v (want k2 only), opened %v (want k1)", sealed, opened)
	}
	for _, c := range []struct {
		target, id string
		body       []byte
	}{{"old", idOld, body}, {"new", idNew, newBody}} {
		ls := leaseAll(t, q, time.Now(), c.target)
		if len(ls) != 1 || ls[0].ID != c.id || ls[0].Corrupt != nil {
			t.Fatalf("lease %s: %+v", c.target, ls)
		}
		if got, err := readBody(t, q, ls[0]); err != nil || !bytes.Equal(got, c.body) {
			t.Errorf("%s blob: %d bytes, %v", c.target, len(got), err)
		}
		finishWith(t, q, ls[0], queue.Outcome{Status: task.Succeeded})
	}
	if _, opened := k2.counts(); opened["k2"] == 0 {
		t.Errorf("opened %v, want k2 too", opened)
	}
	if err := q.Check(); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	// k1 dropped too early: what it sealed cannot be opened. Check says so
	// too, so this queue is not opened through openAt.
	q, err := queue.Open(path, &queue.Options{Sealer: newSealer(t, "k2"), Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ls := leaseAll(t, q, time.Now(), "old2")
	if len(ls) != 1 || ls[0].ID != idOld2 || ls[0].Request != nil ||
		!errors.Is(ls[0].Corrupt, queue.ErrSealed) || !strings.Contains(ls[0].Corrupt.Error(), `unknown key ID "k1"`) {
		t.Fatalf("lease of a k1 record without k1: %+v", ls)
	}
	if tk := status(t, q, idDone); tk.Response != nil || tk.Status != task.Succeeded {
		t.Errorf("task with a k1 response, without k1: %s, response %+v; want it shown without the response", tk.Status, tk.Response)
	}
	if err := q.Check(); err == nil || !strings.Contains(err.Error(), `unknown key ID "k1"`) {
		t.Errorf("Check = %v, want the k1 records reported", err)
	}
}

// TestSealedWithoutSealer: a sealed database opened without a Sealer, or
// with a wrong key, still lists its tasks, and a lease says why their
// requests cannot be read; finished the way the scheduler finishes such a
// lease, the task is Invalid with that reason.
func TestSealedWithoutSealer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		s    queue.Sealer
		want string
	}{
		{"no Sealer", nil, "no Options.Sealer"},
		{"wrong key", must(queue.NewAESGCM("k1", map[string][]byte{"k1": testKey("not k1")})), "authentication failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := openAt(t, filepath.Join(t.TempDir(), "offload.db"), &queue.Options{Sealer: newSealer(t, "k1")})
			id := enqueue(t, q, &queue.Job{Target: "t", Request: secretRequest([]byte("body"))})
			must0(t, q.Close())
			// Check would report the sealed records with a wrong key.
			q = openRaw(t, q.Path(), &queue.Options{Sealer: tt.s})
			if tk := status(t, q, id); tk.Status != task.Enqueued || tk.Request.Method != "" {
				t.Errorf("GetTask = %s with request %+v; want it shown without its request", tk.Status, tk.Request)
			}
			ls := leaseAll(t, q, time.Now(), "t")
			if len(ls) != 1 || ls[0].Request != nil || !errors.Is(ls[0].Corrupt, queue.ErrSealed) ||
				!strings.Contains(ls[0].Corrupt.Error(), tt.want) || !strings.Contains(ls[0].Corrupt.Error(), id) {
				t.Fatalf("lease = %+v, want Corrupt wrapping ErrSealed saying %q", ls, tt.want)
			}
			if _, err := q.OpenBody(ls[0]); !errors.Is(err, queue.ErrSealed) {
				t.Errorf("OpenBody error = %v, want ErrSealed", err)
			}
			// What invoke does with such a lease (replay.go).
			reason := fmt.Sprintf("stored request cannot be decoded: %v", ls[0].Corrupt)
			finishWith(t, q, ls[0], queue.Outcome{Status: task.Invalid, Error: reason})
			if tk := status(t, q, id); tk.Status != task.Invalid || tk.LastError != reason {
				t.Errorf("task = %s (%q), want Invalid with the reason", tk.Status, tk.LastError)
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestSealedBlobWithoutSealer: a sealed blob is never read as plain.
func TestSealedBlobWithoutSealer(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sealedQ := openAt(t, filepath.Join(dir, "a.db"), &queue.Options{Sealer: newSealer(t, "k1")})
	plainQ := openAt(t, filepath.Join(dir, "b.db"), nil)
	name := writeBlob(t, sealedQ, []byte("body"), 10)
	// Copied beside a plain queue, and named by a plain record: the name
	// still says sealed.
	b, _ := os.ReadFile(filepath.Join(dir, "a.db.blobs", name))
	if err := os.WriteFile(filepath.Join(dir, "b.db.blobs", name), b, 0o600); err != nil {
		t.Fatal(err)
	}
	req := request(nil)
	req.Blob, req.BodySize = name, 4
	enqueue(t, plainQ, &queue.Job{Target: "t", Request: req})
	l := leaseAll(t, plainQ, time.Now(), "t")[0]
	if _, err := plainQ.OpenBody(l); !errors.Is(err, queue.ErrSealed) {
		t.Errorf("OpenBody of a sealed blob without a Sealer: %v, want ErrSealed", err)
	}
	finishWith(t, plainQ, l, queue.Outcome{Status: task.Succeeded})
}

// TestSealedMixed: sealing turned on for a database with plain records
// reads them as before, and retention purges both kinds with their blobs.
func TestSealedMixed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "offload.db")
	clk := newClock(time.Now())
	q := openAt(t, path, &queue.Options{Now: clk.Now})
	plainBody := bytes.Repeat([]byte("plain "), 50_000)
	plainReq := request(nil)
	plainReq.Blob, plainReq.BodySize = writeBlob(t, q, plainBody, 1<<20), int64(len(plainBody))
	idPlain := enqueue(t, q, &queue.Job{Target: "p", Request: plainReq})
	idPlainDone := enqueue(t, q, &queue.Job{Target: "pd", Request: request([]byte("plain done"))})
	plainResp := &task.Response{StatusCode: 200, Body: []byte("plain response"), BodySize: 14}
	finishWith(t, q, leaseAll(t, q, clk.Now(), "pd")[0], queue.Outcome{Status: task.Failed, Response: plainResp, Error: "x"})

	q = reopen(t, q, &queue.Options{Now: clk.Now, Sealer: newSealer(t, "k1")})
	if tk := status(t, q, idPlainDone); !reflect.DeepEqual(tk.Response, plainResp) {
		t.Errorf("plain response after sealing was turned on: %+v", tk.Response)
	}
	sealedBody := bytes.Repeat([]byte("sealed "), 50_000)
	sealedReq := request(nil)
	sealedReq.Blob, sealedReq.BodySize = writeBlob(t, q, sealedBody, 1<<20), int64(len(sealedBody))
	idSealed := enqueue(t, q, &queue.Job{Target: "s", Request: sealedReq})
	for _, c := range []struct {
		target, id string
		body       []byte
	}{{"p", idPlain, plainBody}, {"s", idSealed, sealedBody}} {
		ls := leaseAll(t, q, clk.Now(), c.target)
		if len(ls) != 1 || ls[0].ID != c.id || ls[0].Corrupt != nil {
			t.Fatalf("lease %s: %+v", c.target, ls)
		}
		if got, err := readBody(t, q, ls[0]); err != nil || !bytes.Equal(got, c.body) {
			t.Errorf("%s body: %d bytes, %v", c.target, len(got), err)
		}
		finishWith(t, q, ls[0], queue.Outcome{Status: task.Succeeded, Response: secretResponse()})
	}
	// A plain task retried and answered again: its new response is sealed.
	if _, err := task.Retry(ctx, q, idPlainDone, "again"); err != nil {
		t.Fatal(err)
	}
	finishWith(t, q, leaseAll(t, q, clk.Now(), "pd")[0], queue.Outcome{Status: task.Succeeded, Response: secretResponse()})
	if tk := status(t, q, idPlainDone); !reflect.DeepEqual(tk.Response, secretResponse()) {
		t.Errorf("response after the retry: %+v", tk.Response)
	}
	if err := q.Check(); err != nil {
		t.Fatal(err)
	}
	clk.Advance(queue.DefaultRetention + time.Hour)
	if n, err := q.Purge(ctx); err != nil || n != 3 {
		t.Fatalf("Purge = %d, %v; want 3", n, err)
	}
	if left, _ := os.ReadDir(path + ".blobs"); len(left) != 0 {
		t.Errorf("blobs left after purge: %v", left)
	}
}

// openRaw opens path with opts and only closes it on cleanup: a tamper
// test's queue fails Check on purpose.
func openRaw(t *testing.T, path string, opts *queue.Options) *queue.Queue {
	t.Helper()
	opts.Logger = discard
	q, err := queue.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// editBolt changes the database at path (closed) in one transaction.
func editBolt(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func key16(id string) []byte { k := ulid.MustParseStrict(id); return k[:] }

// TestSealedRecordTamper: a sealed record changed in its sealed part or in
// its plain head, or moved under another task's key, and a sealed response
// changed, fail to open (ErrSealed), and Check reports them.
func TestSealedRecordTamper(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		tamper func(t *testing.T, tasks *bolt.Bucket, a, b []byte)
	}{
		{"sealed part", func(t *testing.T, tasks *bolt.Bucket, a, _ []byte) {
			rec := bytes.Clone(tasks.Get(a))
			rec[len(rec)-20] ^= 1
			must0(t, tasks.Put(a, rec))
		}},
		{"plain head", func(t *testing.T, tasks *bolt.Bucket, a, _ []byte) {
			rec := bytes.Clone(tasks.Get(a))
			i := bytes.Index(rec, []byte("idem-a"))
			if i < 0 {
				t.Fatal("idempotency key not in the record's head")
			}
			rec[i+5] = 'z'
			must0(t, tasks.Put(a, rec))
		}},
		{"moved to another key", func(t *testing.T, tasks *bolt.Bucket, a, b []byte) {
			must0(t, tasks.Put(a, bytes.Clone(tasks.Get(b))))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "offload.db")
			sl := newSealer(t, "k1")
			q := openAt(t, path, &queue.Options{Sealer: sl})
			idA := enqueue(t, q, &queue.Job{Target: "t", IdempotencyKey: "idem-a", Request: secretRequest([]byte("a"))})
			idB := enqueue(t, q, &queue.Job{Target: "u", IdempotencyKey: "idem-b", Request: secretRequest([]byte("b"))})
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			editBolt(t, path, func(tx *bolt.Tx) error {
				tt.tamper(t, tx.Bucket([]byte("tasks")), key16(idA), key16(idB))
				return nil
			})
			q = openRaw(t, path, &queue.Options{Sealer: sl})
			if err := q.Check(); err == nil || !strings.Contains(err.Error(), queue.ErrSealed.Error()) {
				t.Errorf("Check = %v, want the sealed request reported", err)
			}
			ls := leaseAll(t, q, time.Now(), "t")
			if len(ls) == 0 || ls[0].Request != nil || !errors.Is(ls[0].Corrupt, queue.ErrSealed) {
				t.Fatalf("lease of the changed record = %+v, want Corrupt wrapping ErrSealed", ls)
			}
		})
	}

	t.Run("response", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "offload.db")
		sl := newSealer(t, "k1")
		q := openAt(t, path, &queue.Options{Sealer: sl})
		id := enqueue(t, q, &queue.Job{Target: "t", Request: secretRequest([]byte("a"))})
		finishWith(t, q, leaseAll(t, q, time.Now(), "t")[0], queue.Outcome{Status: task.Succeeded, Response: secretResponse()})
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		editBolt(t, path, func(tx *bolt.Tx) error {
			st := tx.Bucket([]byte("state"))
			rec := bytes.Clone(st.Get(key16(id)))
			plain, sealed, err := queue.DecodeStateForTest(rec)
			must0(t, err)
			if plain != nil {
				t.Error("state holds a plain response beside the sealed one")
			}
			// The sealed response ends the record: flip a bit of its last
			// byte, and check that the record decodes to the changed one.
			if len(sealed) == 0 || !bytes.HasSuffix(rec, sealed) {
				t.Fatalf("state record %x does not end with its sealed response %x", rec, sealed)
			}
			rec[len(rec)-1] ^= 0x80
			_, changed, err := queue.DecodeStateForTest(rec)
			must0(t, err)
			if want := append(bytes.Clone(sealed[:len(sealed)-1]), sealed[len(sealed)-1]^0x80); !bytes.Equal(changed, want) {
				t.Fatalf("changed sealed response = %x, want %x", changed, want)
			}
			return st.Put(key16(id), rec)
		})
		q = openRaw(t, path, &queue.Options{Sealer: sl})
		if tk := status(t, q, id); tk.Response != nil || tk.Request.Method != http.MethodPut {
			t.Errorf("task with a changed response: response %+v, request %+v", tk.Response, tk.Request)
		}
		if err := q.Check(); err == nil || !strings.Contains(err.Error(), "response: sealed response") {
			t.Errorf("Check = %v, want the response reported", err)
		}
	})
}

func must0(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// segments splits a sealed blob file into its magic and its segments
// (header and sealed bytes each), as the format in seal.go lays them out.
func segments(t *testing.T, b []byte) (magic []byte, segs [][]byte) {
	t.Helper()
	if !bytes.HasPrefix(b, []byte(sealedBlobMagic)) {
		t.Fatalf("sealed blob starts %q", b[:min(len(b), 30)])
	}
	magic, b = b[:len(sealedBlobMagic)], b[len(sealedBlobMagic):]
	for len(b) > 0 {
		n := 5 + int(binary.BigEndian.Uint32(b[1:5]))
		segs, b = append(segs, b[:n]), b[n:]
	}
	return magic, segs
}

// TestSealedBlobTamper changes a sealed blob on disk in every way that
// must be caught: a flipped byte in each segment, segments cut off,
// reordered, repeated, flagged last too early, a file cut anywhere, data
// appended, another blob's segments under this name.
func TestSealedBlobTamper(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q := openAt(t, filepath.Join(dir, "offload.db"), &queue.Options{Sealer: newSealer(t, "k1")})
	body := make([]byte, 3*blobSegment+1000)
	_, _ = rand.Read(body)
	req := request(nil)
	req.Blob, req.BodySize = writeBlob(t, q, body, 70<<10), int64(len(body))
	other := writeBlob(t, q, bytes.Repeat([]byte{7}, len(body)), 70<<10)
	enqueue(t, q, &queue.Job{Target: "t", Request: req})
	enqueue(t, q, &queue.Job{Target: "other", Request: func() *reqcodec.Request {
		r := request(nil)
		r.Blob, r.BodySize = other, int64(len(body))
		return r
	}()})
	l := leaseAll(t, q, time.Now(), "t")[0]
	path := filepath.Join(dir, "offload.db.blobs", req.Blob)
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	otherBytes, _ := os.ReadFile(filepath.Join(dir, "offload.db.blobs", other))
	magic, segs := segments(t, orig)
	if len(segs) != 4 {
		t.Fatalf("%d segments, want 4", len(segs))
	}
	join := func(parts ...[]byte) []byte { return bytes.Join(append([][]byte{magic}, parts...), nil) }
	flip := func(seg, at int) []byte {
		s := slices.Clone(segs)
		s[seg] = bytes.Clone(s[seg])
		s[seg][at] ^= 1
		return join(s...)
	}
	notLast := bytes.Clone(segs[3])
	notLast[0] = 0
	cases := map[string][]byte{
		"segment 0 changed":         flip(0, 100),
		"segment 1 changed":         flip(1, 5+30),
		"segment 3 changed":         flip(3, len(segs[3])-1),
		"segment 2 length changed":  flip(2, 4),
		"last segment cut off":      join(segs[0], segs[1], segs[2]),
		"last segment flag cleared": join(segs[0], segs[1], segs[2], notLast),
		"segments 1 and 2 swapped":  join(segs[0], segs[2], segs[1], segs[3]),
		"segment 1 repeated":        join(segs[0], segs[1], segs[1], segs[2], segs[3]),
		"data appended":             append(bytes.Clone(orig), 0),
		"segment appended":          join(segs[0], segs[1], segs[2], segs[3], segs[3]),
		"magic changed":             append([]byte("offload/sealed-blob/2\n"), orig[len(magic):]...),
		"another blob":              otherBytes,
		"empty file":                {},
	}
	for _, cut := range []int{1, len(magic), len(magic) + 3, len(magic) + 5, len(magic) + len(segs[0]), len(orig) - len(segs[3]) + 5, len(orig) - 1} {
		cases[fmt.Sprintf("cut at %d", cut)] = orig[:cut]
	}
	for name, data := range cases {
		must0(t, os.WriteFile(path, data, 0o600))
		got, err := readBody(t, q, l)
		if !errors.Is(err, queue.ErrSealed) {
			t.Errorf("%s: read %d bytes, error %v; want ErrSealed", name, len(got), err)
		}
	}
	must0(t, os.WriteFile(path, orig, 0o600))
	if got, err := readBody(t, q, l); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("restored blob: %d bytes, %v", len(got), err)
	}
	finishWith(t, q, l, queue.Outcome{Status: task.Succeeded})
}

// TestSealedBlobSizes writes bodies around the segment size, and a body of
// several MiB in random-sized writes, and reads each back through
// testing/iotest (small, odd reads).
func TestSealedBlobSizes(t *testing.T) {
	t.Parallel()
	q := testutil.OpenQueue(t, &queue.Options{Sealer: newSealer(t, "k1"), Logger: discard})
	for _, n := range []int{0, 1, blobSegment - 1, blobSegment, blobSegment + 1, 2 * blobSegment, 5<<20 + 12345} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			body := make([]byte, n)
			_, _ = rand.Read(body)
			req := request(nil)
			req.Blob, req.BodySize = writeBlob(t, q, body, 200<<10), int64(n)
			b, err := os.ReadFile(filepath.Join(q.Path()+".blobs", req.Blob))
			if err != nil {
				t.Fatal(err)
			}
			if _, segs := segments(t, b); len(segs) != max(1, (n+blobSegment-1)/blobSegment) {
				t.Errorf("%d segments for %d bytes", len(segs), n)
			}
			target := fmt.Sprint("size", n)
			enqueue(t, q, &queue.Job{Target: target, Request: req})
			l := leaseAll(t, q, time.Now(), target)[0]
			rc, err := q.OpenBody(l)
			if err != nil {
				t.Fatal(err)
			}
			if err := iotest.TestReader(iotest.OneByteReader(io.LimitReader(rc, 256<<10)), body[:min(n, 256<<10)]); err != nil {
				t.Error(err)
			}
			rc.Close()
			got, err := readBody(t, q, l)
			if err != nil || !bytes.Equal(got, body) {
				t.Errorf("body of %d bytes: read %d, %v", n, len(got), err)
			}
			finishWith(t, q, l, queue.Outcome{Status: task.Succeeded})
		})
	}
}

// TestSealedBlobMemory streams a 64 MiB body through a sealed blob and back,
// and checks that it allocated a few segments' worth, not the body's size.
// Not parallel, so that the allocation count is its own.
func TestSealedBlobMemory(t *testing.T) {
	const size = 64 << 20
	q := testutil.OpenQueue(t, &queue.Options{Sealer: newSealer(t, "k1"), Logger: discard})
	chunk := make([]byte, 256<<10)
	_, _ = rand.Read(chunk)
	sum := sha256.New()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	blob, err := q.CreateBlob()
	if err != nil {
		t.Fatal(err)
	}
	for range size / len(chunk) {
		sum.Write(chunk)
		if _, err := blob.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	must0(t, blob.Close())
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 4<<20 {
		t.Errorf("writing a %d MiB sealed blob allocated %d KiB", size>>20, n>>10)
	}
	want := sum.Sum(nil)

	req := request(nil)
	req.Blob, req.BodySize = blob.Name(), size
	enqueue(t, q, &queue.Job{Target: "big", Request: req})
	l := leaseAll(t, q, time.Now(), "big")[0]
	runtime.ReadMemStats(&before)
	rc, err := q.OpenBody(l)
	if err != nil {
		t.Fatal(err)
	}
	sum.Reset()
	n, err := io.CopyBuffer(sum, rc, make([]byte, 32<<10))
	rc.Close()
	runtime.ReadMemStats(&after)
	if err != nil || n != size || !bytes.Equal(sum.Sum(nil), want) {
		t.Fatalf("read back %d bytes, %v; or the digest differs", n, err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 4<<20 {
		t.Errorf("reading a %d MiB sealed blob allocated %d KiB", size>>20, n>>10)
	}
	finishWith(t, q, l, queue.Outcome{Status: task.Succeeded})
}

// TestSealedConformance runs the backend conformance suite on a queue that
// seals.
func TestSealedConformance(t *testing.T) {
	t.Parallel()
	sl := newSealer(t, "k2", "k1")
	queuetest.Run(t, func(t *testing.T) queue.Backend {
		return testutil.OpenQueue(t, &queue.Options{Logger: discard, Sealer: sl})
	})
}

// BenchmarkSealedEnqueue compares durable enqueues of the 1 KiB request of
// BenchmarkEnqueue with and without a Sealer: chunks of each alternate on
// two new databases, and sealed/plain is the ratio of their times per
// enqueue. Run it with
//
//	go test -run '^$' -bench SealedEnqueue -benchtime 20000x ./queue/
func BenchmarkSealedEnqueue(b *testing.B) {
	for _, callers := range []int{1, 16} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			plain := openBenchQueueWith(b, nil)
			sealed := openBenchQueueWith(b, newSealer(b, "k1"))
			plainFn, sealedFn := enqueueFunc(plain), enqueueFunc(sealed)
			const chunks = 10
			var tPlain, tSealed time.Duration
			b.ResetTimer()
			for i := range chunks {
				n := b.N / chunks
				if i == 0 {
					n += b.N % chunks
				}
				for _, c := range []struct {
					fn func() error
					d  *time.Duration
				}{{plainFn, &tPlain}, {sealedFn, &tSealed}} {
					d, err := callN(callers, n, c.fn)
					if err != nil {
						b.Fatal(err)
					}
					*c.d += d
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(tSealed)/float64(tPlain), "sealed/plain")
			b.ReportMetric(float64(tPlain.Nanoseconds())/float64(b.N), "plain-ns/op")
			b.ReportMetric(float64(tSealed.Nanoseconds())/float64(b.N), "sealed-ns/op")
		})
	}
}

func openBenchQueueWith(b *testing.B, sl queue.Sealer) *queue.Queue {
	b.Helper()
	q, err := queue.Open(filepath.Join(b.TempDir(), "offload.db"), &queue.Options{Sealer: sl, Logger: discard})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := q.Close(); err != nil {
			b.Error(err)
		}
	})
	return q
}

// BenchmarkSealer is AESGCM alone on the 1 KiB request's encoding.
func BenchmarkSealer(b *testing.B) {
	a := newSealer(b, "k1")
	req := benchRequest()
	plain := reqcodec.Append(nil, req)
	ad := make([]byte, 64)
	dst := make([]byte, 0, len(plain)+64)
	b.SetBytes(int64(len(plain)))
	b.ReportAllocs()
	for b.Loop() {
		s, _ := a.Seal(dst[:0], plain, ad)
		if _, err := a.Open(nil, s, ad); err != nil {
			b.Fatal(err)
		}
	}
}

func ExampleNewAESGCM() {
	dir, _ := os.MkdirTemp("", "offload-example")
	defer os.RemoveAll(dir)

	// Keys come from the application's secret store. Rotating adds a key
	// and makes it current; the old one stays while its records are kept.
	keys := map[string][]byte{"2025-01": make([]byte, 32), "2025-06": make([]byte, 32)}
	sealer, err := queue.NewAESGCM("2025-06", keys)
	if err != nil {
		fmt.Println(err)
		return
	}
	q, err := queue.Open(filepath.Join(dir, "offload.db"), &queue.Options{Sealer: sealer})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer q.Close()

	r, _ := q.Enqueue(ctx, &queue.Job{Target: "report", Request: &reqcodec.Request{
		Method: http.MethodPost, RequestURI: "/report", Header: http.Header{"Authorization": {"Bearer t0ken"}},
	}})
	t, _ := task.Query(ctx, q, r.ID)
	fmt.Println(t.Request.Method, t.Request.URL, t.Request.Header.Get("Authorization"))
	// Output: POST /report Bearer t0ken
}

// TestSealedEnqueueBadBlob: a queue that seals takes only its own sealed
// blobs, so that every record it stores can be read back.
func TestSealedEnqueueBadBlob(t *testing.T) {
	t.Parallel()
	q := testutil.OpenQueue(t, &queue.Options{Sealer: newSealer(t, "k1"), Logger: discard})
	for _, name := range []string{"0123456789abcdef0123456789abcdef", "../escape", "x.sealed"} {
		req := request(nil)
		req.Blob = name
		if _, err := q.Enqueue(ctx, &queue.Job{Target: "t", Request: req}); err == nil || !strings.Contains(err.Error(), "not a sealed blob") {
			t.Errorf("Enqueue naming blob %q: %v", name, err)
		}
	}
}
