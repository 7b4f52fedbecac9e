package trigger_test

import (
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/offload-go/offload/trigger"
)

// TestLargeUploadStreams sends a 1 GiB body, generated as it is sent, and
// checks that it is accepted and stored whole while the process allocates
// less than 64 MiB in all: the body is streamed to disk, never held in
// memory.
//
// It does not run in parallel with other tests, because it measures the
// whole process's allocations.
func TestLargeUploadStreams(t *testing.T) {
	const (
		size     = 1 << 30
		maxAlloc = 64 << 20
	)
	b := setup(t, setupOpts{trigger: &trigger.Options{TaskPath: taskPath, MaxBodyBytes: 2 << 30}})
	// Sent chunked, so that the client copies the generated body straight
	// to the connection (see patternBody.WriteTo).
	req, err := http.NewRequest(http.MethodPost, b.srv.URL+workPath+"big", &patternBody{n: size})
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(trigger.HeaderInvocationType, "Async")

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	res := b.do(t, req)
	runtime.ReadMemStats(&after)
	t.Logf("upload took %s", time.Since(start))

	if res.status != http.StatusAccepted {
		t.Fatalf("status %d %s", res.status, res.body)
	}
	// TotalAlloc counts every byte allocated in between, freed or not: a
	// body held whole in memory, even for a moment, would show.
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KiB while uploading 1 GiB (heap in use %d -> %d KiB)",
		allocated>>10, before.HeapInuse>>10, after.HeapInuse>>10)
	if allocated >= maxAlloc {
		t.Errorf("allocated %d MiB while uploading 1 GiB, want < %d MiB", allocated>>20, maxAlloc>>20)
	}

	tk := b.query(t, res.header.Get(trigger.HeaderRequestID))
	if tk.Request.BodySize != size {
		t.Errorf("stored body size %d, want %d", tk.Request.BodySize, size)
	}
	blobs := b.blobs(t)
	if len(blobs) != 1 {
		t.Fatalf("%d blob files, want 1", len(blobs))
	}
	// Compare checksums, which the race detector does not slow down as it
	// does byte comparisons.
	f, err := os.Open(b.blobPath(blobs[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := crc32.NewIEEE()
	n, err := io.CopyBuffer(got, f, make([]byte, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	want := crc32.NewIEEE()
	(&patternBody{n: size}).WriteTo(want)
	if got.Sum32() != want.Sum32() {
		t.Errorf("stored body differs from what was sent")
	}
	if n != size {
		t.Errorf("blob holds %d bytes, want %d", n, size)
	}
}

// patternBody is a body of n bytes generated as it is read: byte i is
// byte(i % 251). Its WriteTo writes slices of one shared block, with no
// copy.
type patternBody struct{ n, off int64 }

func (p *patternBody) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off)]
	n := 0
	for n < len(b) {
		n += copy(b[n:], patternBlock[(p.off+int64(n))%251:])
	}
	p.off += int64(n)
	return n, nil
}

func (p *patternBody) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for p.off < p.n {
		chunk := patternBlock[p.off%251:]
		chunk = chunk[:min(int64(len(chunk)), p.n-p.off)]
		n, err := w.Write(chunk)
		p.off += int64(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
