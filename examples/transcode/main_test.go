package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/offload-go/offload/destination"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The tests run the example in-process: run serves on a free port until
// its context is cancelled, as main does until SIGINT or SIGTERM.

const maxWidth = 160

// TestImage uploads a PNG and a JPEG asynchronously, waits for the tasks
// to succeed through the task API, and checks that the outputs decode at
// the reduced size and that the success hook got each record. It also
// makes a sync call, which answers when the work is done.
func TestImage(t *testing.T) {
	t.Parallel()
	s := start(t)
	for _, tc := range []struct {
		name, format, wantOut string
		encode                func(io.Writer, image.Image) error
	}{
		{"photo.png", "png", "photo.160w.png", png.Encode},
		{"photo.jpg", "jpeg", "photo.160w.jpg", func(w io.Writer, m image.Image) error { return jpeg.Encode(w, m, nil) }},
	} {
		var buf bytes.Buffer
		if err := tc.encode(&buf, testImage(480, 360)); err != nil {
			t.Fatal(err)
		}
		id := s.upload(t, tc.name, buf.Bytes())
		tk := s.waitDone(t, id)
		if tk.Status != "Succeeded" {
			t.Fatalf("%s: task %s: %s", tc.name, tk.Status, tk.ReturnPayload)
		}
		if tk.Progress == nil || tk.Progress.Percent != 100 {
			t.Errorf("%s: progress %+v, want 100%%", tc.name, tk.Progress)
		}
		var res result
		if err := json.Unmarshal([]byte(tk.ReturnPayload), &res); err != nil {
			t.Fatalf("%s: payload %q: %v", tc.name, tk.ReturnPayload, err)
		}
		if res.Output != filepath.Join(s.dir, tc.wantOut) {
			t.Errorf("%s: output %s, want %s beside the input", tc.name, res.Output, tc.wantOut)
		}
		checkImage(t, res.Output, tc.format, maxWidth, 120)

		h := s.waitHook(t, id)
		if h.path != "/hooks/succ" || h.rec.RequestContext.Condition != destination.Success ||
			h.rec.ResponseContext.StatusCode != http.StatusOK || !strings.Contains(h.rec.ResponsePayload, tc.wantOut) {
			t.Errorf("%s: hook %s %+v", tc.name, h.path, h.rec.RequestContext)
		}
	}

	// Without the async header the same endpoint works synchronously.
	var buf bytes.Buffer
	png.Encode(&buf, testImage(320, 80))
	res, body := s.do(t, http.MethodPost, "/videos/banner.png", buf.Bytes(), nil)
	var out result
	if res.StatusCode != http.StatusOK || json.Unmarshal(body, &out) != nil {
		t.Fatalf("sync upload: %d %s", res.StatusCode, body)
	}
	checkImage(t, out.Output, "png", maxWidth, 40)

	// The receivers refuse a callback that is not signed with the secret.
	forged := []byte(`{"requestContext":{"requestId":"x","condition":"Success"}}`)
	if res, _ := s.do(t, http.MethodPost, "/hooks/succ", forged, http.Header{
		destination.HeaderSignature: {destination.Sign([]byte("another secret, long enough"), time.Now(), forged)},
	}); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("a forged callback was answered %d", res.StatusCode)
	}

	s.checkNoOtherHooks(t)
	if out := s.stdout.String(); !strings.Contains(out, "curl -si -X POST -H 'X-Fc-Invocation-Type: Async' --data-binary @clip.mp4 "+s.base+"/videos/clip.mp4") {
		t.Errorf("the printed commands do not use the address:\n%s", out)
	}
}

// TestVideo uploads a short video made by ffmpeg's test source and checks
// the transcoded output with ffprobe.
func TestVideo(t *testing.T) {
	t.Parallel()
	ffmpeg := needFFmpeg(t)
	s := start(t)
	src := filepath.Join(t.TempDir(), "clip.mp4")
	makeVideo(t, ffmpeg, src, 2)
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}

	id := s.upload(t, "clip.mp4", data)
	tk := s.waitDone(t, id)
	if tk.Status != "Succeeded" {
		t.Fatalf("task %s: %s; logs %+v", tk.Status, tk.ReturnPayload, tk.Logs)
	}
	var res result
	if err := json.Unmarshal([]byte(tk.ReturnPayload), &res); err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(s.dir, "clip.160w.mp4")
	if res.Output != want || res.Kind != "video" || res.Width != maxWidth || res.Height != 120 {
		t.Errorf("result %+v, want a 160x120 video at %s", res, want)
	}
	// ffprobe reads the output: H.264, 160x120, about 2 seconds.
	out, err := exec.Command("ffprobe", "-v", "error", "-select_streams", "v:0",
		"-show_entries", "stream=codec_name,width,height:format=duration", "-of", "default=noprint_wrappers=1", want).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", want, err)
	}
	info := map[string]string{}
	for line := range strings.Lines(string(out)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		info[k] = v
	}
	d, _ := strconv.ParseFloat(info["duration"], 64)
	if info["codec_name"] != "h264" || info["width"] != "160" || info["height"] != "120" || d < 1.9 || d > 2.1 {
		t.Errorf("ffprobe of the output: %v", info)
	}
	if tk.Progress == nil || tk.Progress.Percent != 100 {
		t.Errorf("progress %+v", tk.Progress)
	}

	h := s.waitHook(t, id)
	if h.path != "/hooks/succ" || h.rec.RequestContext.Condition != destination.Success {
		t.Errorf("hook %s %+v", h.path, h.rec.RequestContext)
	}
	s.checkNoOtherHooks(t)
}

// TestCorrupt uploads files that cannot be transcoded: the tasks fail at
// once (422, no retry), the failure hook gets them, and no output is left.
func TestCorrupt(t *testing.T) {
	t.Parallel()
	s := start(t)
	uploads := map[string][]byte{
		// A PNG signature, then garbage.
		"broken.png": append([]byte("\x89PNG\r\n\x1a\n"), bytes.Repeat([]byte("garbage!"), 100)...),
	}
	if _, err := exec.LookPath("ffprobe"); err == nil || os.Getenv("CI") == "true" {
		uploads["broken.mp4"] = []byte("this is not a video at all")
	}
	for name, data := range uploads {
		id := s.upload(t, name, data)
		tk := s.waitDone(t, id)
		if tk.Status != "Failed" || tk.InvocationCount != 1 || tk.Response == nil || tk.Response.StatusCode != http.StatusUnprocessableEntity {
			t.Errorf("%s: task %s after %d attempts: %s", name, tk.Status, tk.InvocationCount, tk.ReturnPayload)
		}
		h := s.waitHook(t, id)
		if h.path != "/hooks/fail" || h.rec.RequestContext.Condition != destination.NonRetryableError ||
			h.rec.ResponseContext.StatusCode != http.StatusUnprocessableEntity {
			t.Errorf("%s: hook %s %+v %+v", name, h.path, h.rec.RequestContext, h.rec.ResponseContext)
		}
	}
	s.checkNoOtherHooks(t)
	s.checkNoLeftovers(t, "broken.")
}

// Uploads are saved in -dir, beside the queue's database and the outputs:
// a name that would replace one of them is refused, and the queue goes on.
func TestUploadNamesThatWouldReplaceFiles(t *testing.T) {
	t.Parallel()
	s := start(t)
	db := filepath.Join(s.dir, "offload.db")
	before, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"offload.db", "offload.db.journal", "clip.640w.png", "notes.txt", "noext"} {
		res, body := s.do(t, http.MethodPost, "/videos/"+name, []byte("not what was there"), nil)
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("sync upload %q: %d %s; want 400", name, res.StatusCode, body)
		}
	}
	if after, err := os.Stat(db); err != nil || !os.SameFile(before, after) {
		t.Errorf("the database file was replaced by an upload (%v)", err)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, testImage(32, 32)); err != nil {
		t.Fatal(err)
	}
	id := s.upload(t, "fine.png", buf.Bytes())
	if tk := s.waitDone(t, id); tk.Status != "Succeeded" {
		t.Errorf("an upload after the refused ones: %s %s", tk.Status, tk.ReturnPayload)
	}
}

// TestStop stops a transcode while ffmpeg runs: ffmpeg is killed, the
// partial output removed, and the task ends Stopped, which the failure
// hook hears. ffmpeg is slowed to real time (-re) by a wrapper script
// that also writes its process ID, so that the task is surely running
// when it is stopped and the test can check the process is gone.
func TestStop(t *testing.T) {
	t.Parallel()
	ffmpeg := needFFmpeg(t)
	tmp := t.TempDir()
	pidFile := filepath.Join(tmp, "ffmpeg.pid")
	wrapper := filepath.Join(tmp, "slow-ffmpeg")
	script := fmt.Sprintf("#!/bin/sh\necho $$ > '%s'\nexec '%s' -re \"$@\"\n", pidFile, ffmpeg)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	s := start(t, func(c *config) { c.ffmpeg = wrapper })
	src := filepath.Join(tmp, "long.mp4")
	makeVideo(t, ffmpeg, src, 60)
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}

	id := s.upload(t, "long.mp4", data)
	// Wait until the task reports ffmpeg's progress.
	tk := s.poll(t, id, func(tk *taskView) bool {
		return tk.Status.terminal() || tk.Progress != nil && strings.HasPrefix(tk.Progress.Message, "transcoding")
	})
	if tk.Status != "Running" {
		t.Fatalf("task %s before it was stopped: %s", tk.Status, tk.ReturnPayload)
	}
	if !slices.ContainsFunc(s.leftovers(t, "long."), func(name string) bool { return strings.HasSuffix(name, ".part") }) {
		t.Errorf("no partial output while ffmpeg runs: %v", s.leftovers(t, "long."))
	}
	pid := readPID(t, pidFile)

	res, body := s.do(t, http.MethodPost, "/tasks/"+id+"/stop", nil, nil)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("stop: %d %s", res.StatusCode, body)
	}
	tk = s.waitDone(t, id)
	if tk.Status != "Stopped" {
		t.Fatalf("task %s after stop", tk.Status)
	}
	// The handler returned, so it waited for ffmpeg: the process is gone.
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("ffmpeg (pid %d) still exists after the stop: kill 0: %v", pid, err)
	}
	s.checkNoLeftovers(t, "long.")
	h := s.waitHook(t, id)
	if h.path != "/hooks/fail" || h.rec.RequestContext.Condition != destination.Stopped {
		t.Errorf("hook %s %+v", h.path, h.rec.RequestContext)
	}
	s.checkNoOtherHooks(t)
}

// server is one run of the example.
type server struct {
	base   string
	dir    string
	client *http.Client
	stdout lockedBuffer

	mu    sync.Mutex
	hooks []hook
	more  chan struct{} // a hook arrived
}

type hook struct {
	path string
	rec  destination.Record
}

func start(t *testing.T, modify ...func(*config)) *server {
	t.Helper()
	s := &server{dir: t.TempDir(), more: make(chan struct{}, 1)}
	ready := make(chan string, 1)
	cfg := config{
		addr:        "127.0.0.1:0",
		dir:         s.dir,
		maxWidth:    maxWidth,
		maxUpload:   64 << 20,
		concurrency: 2,
		timeout:     time.Minute,
		ffmpeg:      "ffmpeg",
		ffprobe:     "ffprobe",
		secret:      "a test secret of enough bytes",
		log:         slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		onListen:    func(base string) { ready <- base },
		onHook: func(path string, rec destination.Record) {
			s.mu.Lock()
			s.hooks = append(s.hooks, hook{path, rec})
			s.mu.Unlock()
			select {
			case s.more <- struct{}{}:
			default:
			}
		},
	}
	for _, m := range modify {
		m(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, &s.stdout) }()
	select {
	case s.base = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("run: %v", err)
	}
	s.client = &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(func() {
		s.client.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return s
}

func (s *server) do(t *testing.T, method, path string, body []byte, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, s.base+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, b
}

// upload sends an async upload and returns the task ID from the 202.
func (s *server) upload(t *testing.T, name string, data []byte) string {
	t.Helper()
	res, body := s.do(t, http.MethodPost, "/videos/"+name, data, http.Header{"X-Fc-Invocation-Type": {"Async"}})
	var acc struct{ ID, Status string }
	if res.StatusCode != http.StatusAccepted || json.Unmarshal(body, &acc) != nil || acc.Status != "Enqueued" ||
		res.Header.Get("Location") != "/tasks/"+acc.ID {
		t.Fatalf("upload %s: %d %s", name, res.StatusCode, body)
	}
	return acc.ID
}

// taskView is what the task API shows, in part.
type taskView struct {
	ID              string
	Status          status
	InvocationCount int
	Progress        *struct {
		Percent float64
		Message string
	}
	Logs     []struct{ Level, Message string }
	Response *struct{ StatusCode int }
	// ReturnPayload is the handler's answer.
	ReturnPayload string
}

type status string

func (s status) terminal() bool {
	switch s {
	case "Succeeded", "Failed", "Stopped", "Expired", "Invalid":
		return true
	}
	return false
}

// poll reads the task through the task API until done says so, for at
// most a minute.
func (s *server) poll(t *testing.T, id string, done func(*taskView) bool) *taskView {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(time.Minute)
	for {
		res, body := s.do(t, http.MethodGet, "/tasks/"+id, nil, nil)
		var tk taskView
		if res.StatusCode != http.StatusOK || json.Unmarshal(body, &tk) != nil {
			t.Fatalf("GET /tasks/%s: %d %s", id, res.StatusCode, body)
		}
		if done(&tk) {
			return &tk
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s still %s after a minute: %s", id, tk.Status, body)
		}
		<-tick.C
	}
}

func (s *server) waitDone(t *testing.T, id string) *taskView {
	t.Helper()
	return s.poll(t, id, func(tk *taskView) bool { return tk.Status.terminal() })
}

// waitHook waits for the callback of task id and returns it.
func (s *server) waitHook(t *testing.T, id string) hook {
	t.Helper()
	timeout := time.NewTimer(time.Minute)
	defer timeout.Stop()
	for {
		s.mu.Lock()
		for _, h := range s.hooks {
			if h.rec.RequestContext.RequestID == id {
				s.mu.Unlock()
				return h
			}
		}
		s.mu.Unlock()
		select {
		case <-s.more:
		case <-timeout.C:
			t.Fatalf("no callback for task %s within a minute", id)
		}
	}
}

// checkNoOtherHooks checks that no task got two callbacks, and that every
// callback was verified: a second one would be a repeated delivery.
func (s *server) checkNoOtherHooks(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	for _, h := range s.hooks {
		id := h.rec.RequestContext.RequestID
		if seen[id] {
			t.Errorf("task %s got a second callback at %s", id, h.path)
		}
		seen[id] = true
	}
}

// leftovers lists the files of the data directory that start with prefix
// or are partial outputs of it.
func (s *server) leftovers(t *testing.T, prefix string) []string {
	t.Helper()
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "."+prefix) || strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// checkNoLeftovers checks that only the uploaded inputs remain: no output
// and no partial file.
func (s *server) checkNoLeftovers(t *testing.T, prefix string) {
	t.Helper()
	for _, name := range s.leftovers(t, prefix) {
		if strings.HasSuffix(name, ".part") || strings.Contains(name, "w.") {
			t.Errorf("%s left in the data directory", name)
		}
	}
}

func checkImage(t *testing.T, path, format string, w, h int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, got, err := image.Decode(f)
	if err != nil {
		t.Fatalf("%s does not decode: %v", path, err)
	}
	if got != format || m.Bounds().Dx() != w || m.Bounds().Dy() != h {
		t.Errorf("%s: %s %dx%d, want %s %dx%d", path, got, m.Bounds().Dx(), m.Bounds().Dy(), format, w, h)
	}
}

// testImage is a gradient with a diagonal stripe.
func testImage(w, h int) image.Image {
	m := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			c := color.NRGBA{uint8(255 * x / w), uint8(255 * y / h), 128, 255}
			if (x+y)%50 < 10 {
				c = color.NRGBA{255, 255, 255, 255}
			}
			m.SetNRGBA(x, y, c)
		}
	}
	return m
}

// needFFmpeg returns ffmpeg's path. Without ffmpeg the test is skipped on
// a developer's machine, and fails in CI, where .ci/run installs it.
func needFFmpeg(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("ffmpeg")
	if err == nil {
		_, err = exec.LookPath("ffprobe")
	}
	if err != nil {
		t.Fatalf("the video path needs ffmpeg and ffprobe: apt-get install -y ffmpeg, or run bash .ci/run, which installs it: %v", err)
	}
	return p
}

// makeVideo writes a test-pattern video of secs seconds, 320x240 at 25 fps.
func makeVideo(t *testing.T, ffmpeg, path string, secs int) {
	t.Helper()
	out, err := exec.Command(ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi",
		"-i", fmt.Sprintf("testsrc=duration=%d:size=320x240:rate=25", secs),
		"-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", path).CombinedOutput()
	if err != nil {
		t.Fatalf("making a test video: %v\n%s", err, out)
	}
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pid file: %q", b)
	}
	return pid
}

// testWriter sends the example's log to the test's.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
