package chaos_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestGracefulRestart sends SIGTERM while requests arrive: the server
// answers 503 with Retry-After while running tasks finish (never a reset
// mid-202), exits cleanly, and after a restart nothing is missing.
func TestGracefulRestart(t *testing.T) {
	rec, callback := newRecorder(t)
	addr, db := freeAddr(t), filepath.Join(t.TempDir(), "graceful.db")
	// Slow tasks, so that some are running when SIGTERM comes.
	env := []string{envAddr + "=" + addr, envDB + "=" + db, envCallback + "=" + callback, envWorkMs + "=200"}

	c := startChild(t, env...)
	ld := startLoad(t, addr, 16)
	ld.waitAccepted(t, 100)
	c.terminate(t)
	ld.mu.Lock()
	refused := ld.codes[http.StatusServiceUnavailable]
	ld.mu.Unlock()

	c = startChild(t, env...)
	ld.waitAccepted(t, 50)
	ld.halt()
	accepted, _ := ld.snapshot()
	rec.waitAll(t, accepted, 2*time.Minute)
	c.terminate(t)
	checkDB(t, db)

	t.Logf("graceful: accepted %d, answered 503 + Retry-After during shutdown %d", len(accepted), refused)
	if refused == 0 {
		t.Error("no request was answered 503 while the server drained")
	}
	if len(ld.bad) > 0 {
		t.Errorf("answers outside the contract: %.10q", ld.bad)
	}
}

// TestDiskFull runs the server with a file-size limit, so that its writes
// start failing as on a full disk: async requests get 503, never 202; sync
// requests keep working; when space returns the service recovers without
// a restart, and nothing accepted earlier is lost or corrupted.
func TestDiskFull(t *testing.T) {
	rec, callback := newRecorder(t)
	addr, db := freeAddr(t), filepath.Join(t.TempDir(), "full.db")
	env := []string{envAddr + "=" + addr, envDB + "=" + db, envCallback + "=" + callback,
		envFsize + "=" + fmt.Sprint(20<<20)} // bbolt grows its file 16 MiB at a time
	c := startChild(t, env...)
	url := "http://" + addr + "/work"
	client := &http.Client{Timeout: 30 * time.Second}

	post := func(async bool, body []byte) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		if async {
			req.Header.Set("X-Fc-Invocation-Type", "Async")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
			t.Errorf("503 without Retry-After: %s", b)
		}
		return resp.StatusCode, string(b)
	}
	id := func(body string) string {
		_, rest, _ := strings.Cut(body, `"id":"`)
		id, _, _ := strings.Cut(rest, `"`)
		return id
	}

	// Fill the disk until writes fail. Freed pages make room again now and
	// then, so a 202 may still come between 503s: that one must be durable
	// like any other, which the end of the test checks.
	var accepted []string
	chunk := bytes.Repeat([]byte("d"), 16<<10)
	refused := 0
	for n := 0; refused < 5; n++ {
		if n > 20000 {
			t.Fatal("the file-size limit never bit")
		}
		switch code, body := post(true, chunk); code {
		case http.StatusAccepted:
			accepted = append(accepted, id(body))
		case http.StatusServiceUnavailable:
			refused++
		default:
			t.Fatalf("async on a filling disk: %d %s", code, body)
		}
	}
	// Sync requests are still served.
	if code, body := post(false, []byte("sync")); code != http.StatusOK {
		t.Fatalf("sync on a full disk: %d %s; want 200", code, body)
	}
	// The limit is per file: a body larger than it fails writing its blob.
	if code, body := post(true, bytes.Repeat([]byte("b"), 21<<20)); code != http.StatusServiceUnavailable {
		t.Fatalf("blob body past the limit: %d %s; want 503", code, body)
	}
	if code, body := post(false, []byte("sync")); code != http.StatusOK {
		t.Fatalf("sync on a full disk: %d %s; want 200", code, body)
	}

	// Space returns: accepted again without a restart.
	if err := c.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	c.waitLine(t, "space returned")
	for range 20 {
		code, body := post(true, chunk)
		if code != http.StatusAccepted {
			t.Fatalf("async after space returned: %d %s", code, body)
		}
		accepted = append(accepted, id(body))
	}
	rec.waitAll(t, accepted, 2*time.Minute)
	c.terminate(t)
	checkDB(t, db)
	t.Logf("disk full: %d accepted before and after, all ran and were delivered", len(accepted))
}
