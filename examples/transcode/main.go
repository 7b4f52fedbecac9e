// Command transcode is a video site's upload endpoint made asynchronous
// with offload: the scenario that motivated Function Compute's async HTTP
// invocation.
//
//	go run ./examples/transcode
//
// A client uploads a file with POST /videos/{name} and the header
// X-Fc-Invocation-Type: Async, and gets 202 and a task ID at once. The
// scheduler then replays the upload into the same handler, which saves the
// file under -dir and transcodes it next to the input:
//
//   - a video with ffmpeg (through os/exec), scaled to -max-width and
//     encoded as H.264/AAC MP4; progress comes from ffmpeg's -progress
//     output against the duration that ffprobe reports;
//   - an image (PNG, JPEG, GIF, WebP) with the standard library and
//     golang.org/x/image/draw (Catmull-Rom scaling to -max-width),
//     re-encoded as JPEG for a JPEG and as PNG otherwise.
//
// The handler reports progress with task.SetProgress, which the task API
// shows, and stops cleanly when the task is stopped: its context is
// cancelled, exec.CommandContext kills ffmpeg, and the partial output is
// removed. Results go to two webhooks (offload destinations, signed with
// HMAC-SHA256) served by this same program at /hooks/succ and /hooks/fail,
// Function Compute's dest-succ and dest-fail: they verify the signature and
// log the record.
//
// Without the async header the same endpoint transcodes synchronously and
// answers when done.
package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image"
	_ "image/gif" // GIF for image.Decode
	"image/jpeg"
	"image/png"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/image/draw"
	_ "golang.org/x/image/webp" // WebP for image.Decode

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

// config is what the flags set, plus two seams for the test.
type config struct {
	addr        string
	dir         string
	dbPath      string
	maxWidth    int
	maxUpload   int64
	concurrency int
	timeout     time.Duration
	ffmpeg      string
	ffprobe     string
	secret      string
	onSuccess   string // webhook URL; empty means this program's /hooks/succ
	onFailure   string // webhook URL; empty means this program's /hooks/fail

	log      *slog.Logger                              // nil: text to stderr
	onListen func(base string)                         // called once the server listens
	onHook   func(path string, rec destination.Record) // called for each verified callback
}

func main() {
	var cfg config
	flag.StringVar(&cfg.addr, "addr", "127.0.0.1:8080", "address to listen on")
	flag.StringVar(&cfg.dir, "dir", "transcode-data", "directory for uploads and their outputs")
	flag.StringVar(&cfg.dbPath, "db", "", "queue database file (default <dir>/offload.db)")
	flag.IntVar(&cfg.maxWidth, "max-width", 640, "width to scale videos and images down to")
	flag.Int64Var(&cfg.maxUpload, "max-upload", 512<<20, "largest upload in bytes")
	flag.IntVar(&cfg.concurrency, "concurrency", 2, "transcodes running at once")
	flag.DurationVar(&cfg.timeout, "timeout", 30*time.Minute, "time limit of one transcode attempt")
	flag.StringVar(&cfg.ffmpeg, "ffmpeg", "ffmpeg", "ffmpeg command")
	flag.StringVar(&cfg.ffprobe, "ffprobe", "ffprobe", "ffprobe command")
	flag.StringVar(&cfg.secret, "secret", os.Getenv("TRANSCODE_WEBHOOK_SECRET"),
		"webhook signing secret, at least 16 bytes (default $TRANSCODE_WEBHOOK_SECRET, else random)")
	flag.StringVar(&cfg.onSuccess, "on-success", "", "onSuccess webhook URL (default this program's /hooks/succ)")
	flag.StringVar(&cfg.onFailure, "on-failure", "", "onFailure webhook URL (default this program's /hooks/fail)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "transcode:", err)
		os.Exit(1)
	}
}

// run serves until ctx is cancelled, then shuts down gracefully.
func run(ctx context.Context, cfg config, stdout io.Writer) error {
	log := cfg.log
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if cfg.maxWidth < 2 || cfg.maxUpload < 1 || cfg.concurrency < 1 {
		return errors.New("-max-width must be at least 2, -max-upload and -concurrency at least 1")
	}
	secret := []byte(cfg.secret)
	if len(secret) == 0 {
		secret = []byte(rand.Text()) // 26 random characters
	}
	dir, err := filepath.Abs(cfg.dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	dbPath := cfg.dbPath
	if dbPath == "" {
		dbPath = filepath.Join(dir, "offload.db")
	}

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	base := "http://" + ln.Addr().String()

	db, err := queue.Open(dbPath, &queue.Options{Logger: log})
	if err != nil {
		return err
	}
	defer db.Close()
	sched, err := invoke.New(db, &invoke.Options{Logger: log})
	if err != nil {
		return err
	}

	// The destinations: signed webhooks. Their client is closed at the end,
	// so that no idle connection outlives run.
	hookClient := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	defer hookClient.CloseIdleConnections()
	hookOpts := &destination.WebhookOptions{Client: hookClient, Timeout: 10 * time.Second}
	onSuccess, err := destination.NewWebhook(cmp.Or(cfg.onSuccess, base+"/hooks/succ"), secret, hookOpts)
	if err != nil {
		return err
	}
	onFailure, err := destination.NewWebhook(cmp.Or(cfg.onFailure, base+"/hooks/fail"), secret, hookOpts)
	if err != nil {
		return err
	}

	tc := &transcoder{log: log, dir: dir, maxWidth: cfg.maxWidth, maxUpload: cfg.maxUpload, ffmpeg: cfg.ffmpeg, ffprobe: cfg.ffprobe}
	tr := trigger.New(sched, &trigger.Options{TaskPath: "/tasks/", MaxBodyBytes: cfg.maxUpload})
	mux := http.NewServeMux()
	mux.Handle("POST /videos/{name}", tr.Async("transcode", tc, &invoke.Policy{
		Concurrency: cfg.concurrency,
		Timeout:     cfg.timeout,
		MaxRetries:  2,
		// A missing ffmpeg (501) will not be fixed by retrying.
		Classify: func(code int) invoke.Verdict {
			if code == http.StatusNotImplemented {
				return invoke.Fail
			}
			return invoke.DefaultClassify(code)
		},
		OnSuccess: onSuccess,
		OnFailure: onFailure,
	}))
	// Mount the task API behind your own authentication in a real service.
	mux.Handle("/tasks/", http.StripPrefix("/tasks", trigger.TaskAPI(db, nil)))
	mux.Handle("POST /hooks/succ", receiver("dest-succ", secret, log, cfg.onHook))
	mux.Handle("POST /hooks/fail", receiver("dest-fail", secret, log, cfg.onHook))

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	schedDone := make(chan error, 1)
	go func() { schedDone <- sched.Run(context.WithoutCancel(ctx)) }()
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()

	if _, err := exec.LookPath(cfg.ffmpeg); err != nil {
		log.Warn("ffmpeg not found: video uploads will fail; images still work", "ffmpeg", cfg.ffmpeg)
	}
	printTry(stdout, base, dir)
	if cfg.onListen != nil {
		cfg.onListen(base)
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-srvDone:
	}
	log.Info("shutting down")

	// The webhook receivers live in this server, so the scheduler stops
	// first: it claims no more tasks (new async uploads are answered 503
	// ShuttingDown) and lets running transcodes and deliveries finish for
	// up to 30s. Then the server stops.
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sched.Stop(sctx); err != nil {
		log.Warn("scheduler stop: running transcodes were cancelled and will run again", "err", err)
	}
	if err := <-schedDone; err != nil {
		log.Warn("scheduler", "err", err)
	}
	if serveErr == nil {
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("http shutdown", "err", err)
		}
		serveErr = <-srvDone
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}

// receiver is a webhook endpoint: it checks the record's signature and
// logs it. It answers 2xx only for a record it verified, so that offload
// retries a delivery that did not get through.
func receiver(name string, secret []byte, log *slog.Logger, onHook func(string, destination.Record)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec, err := destination.VerifyRequest(r, secret, 0)
		if err != nil {
			log.Warn(name+": rejected a callback", "err", err)
			code := http.StatusUnauthorized // ErrSignature
			if errors.Is(err, destination.ErrBadRecord) {
				code = http.StatusBadRequest
			}
			http.Error(w, http.StatusText(code), code)
			return
		}
		rc := rec.RequestContext
		attrs := []any{"id", rc.RequestID, "target", rc.FunctionArn, "condition", rc.Condition,
			"invocations", rc.ApproximateInvokeCount, "status", rec.ResponseContext.StatusCode}
		var res result
		if json.Unmarshal([]byte(rec.ResponsePayload), &res) == nil && res.Output != "" {
			attrs = append(attrs, "output", res.Output)
		}
		if rc.Condition == destination.Success {
			log.Info(name+": task succeeded", attrs...)
		} else {
			attrs = append(attrs, "error", rec.ResponseContext.FunctionError, "response", truncate(rec.ResponsePayload, 200))
			log.Warn(name+": task failed", attrs...)
		}
		if onHook != nil {
			onHook(r.URL.Path, rec)
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// transcoder is the upload handler.
type transcoder struct {
	log             *slog.Logger
	dir             string
	maxWidth        int
	maxUpload       int64
	ffmpeg, ffprobe string
}

// result is the handler's answer, kept on the task and sent to the
// destinations as the record's responsePayload.
type result struct {
	Kind     string  `json:"kind"` // "video" or "image"
	Input    string  `json:"input"`
	Output   string  `json:"output"`
	Bytes    int64   `json:"bytes"`
	Width    int     `json:"width"`
	Height   int     `json:"height"`
	Duration float64 `json:"durationSeconds,omitempty"`
}

// inputError is an upload that no retry can transcode: answered 422, so
// the task fails at once and goes to onFailure.
type inputError struct{ err error }

func (e *inputError) Error() string { return e.err.Error() }
func (e *inputError) Unwrap() error { return e.err }

// errNoFFmpeg: a video arrived but ffmpeg is not installed.
var errNoFFmpeg = errors.New("ffmpeg is not installed")

// Largest image accepted, in pixels, to refuse decompression bombs.
const maxPixels = 100 << 20

var (
	videoExts = map[string]bool{".mp4": true, ".m4v": true, ".mov": true, ".mkv": true, ".webm": true, ".avi": true, ".mpg": true, ".ts": true}
	imageExts = map[string]bool{".png": true, ".jpg": true, ".jpeg": true, ".gif": true, ".webp": true}
	// outputName matches what outputPath makes, as clip.640w.mp4.
	outputName = regexp.MustCompile(`\.[0-9]+w\.[^.]+$`)
)

func (tc *transcoder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	log := tc.log
	if _, async := task.FromContext(ctx); async {
		log = task.Logger(ctx) // also kept with the task, for the task API
	}
	name := r.PathValue("name")
	if !validName(name) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "the name must be a plain file name with an image or video extension, not an output's"})
		return
	}
	in := filepath.Join(tc.dir, name)
	// Each attempt saves the upload afresh from the request body, which
	// offload stored: a retry starts from a clean copy.
	n, err := saveFile(in, http.MaxBytesReader(w, r.Body, tc.maxUpload))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "reading the upload: " + err.Error()})
		return
	}
	task.SetProgress(ctx, 1, fmt.Sprintf("saved %d bytes", n))

	var res *result
	switch kindOf(in) {
	case "image":
		res, err = tc.image(ctx, in)
	case "video":
		res, err = tc.video(ctx, in)
	default:
		writeJSON(w, http.StatusUnsupportedMediaType, map[string]string{"error": "not an image or a video: " + name})
		return
	}
	var bad *inputError
	switch {
	case err == nil:
		task.SetProgress(ctx, 100, "done: "+filepath.Base(res.Output))
		log.Info("transcoded", "output", res.Output, "bytes", res.Bytes)
		writeJSON(w, http.StatusOK, res)
	case ctx.Err() != nil:
		// Stopped, timed out or shutting down: offload decides what follows
		// by the cause, whatever we answer.
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": context.Cause(ctx).Error()})
	case errors.As(err, &bad):
		log.Warn("cannot transcode", "err", err)
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": err.Error()})
	case errors.Is(err, errNoFFmpeg):
		writeJSON(w, http.StatusNotImplemented, map[string]string{"error": err.Error()})
	default: // retried
		log.Error("transcode failed", "err", err)
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
	}
}

// validName accepts a plain file name, no directories, with an image or
// video extension: an upload is saved under it in -dir, which also holds
// the queue's database (offload.db) and the outputs (clip.640w.mp4), and
// must never replace them.
func validName(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	return name != "" && len(name) <= 200 && filepath.IsLocal(name) && !strings.ContainsAny(name, `/\`) &&
		!strings.HasPrefix(name, ".") && (videoExts[ext] || imageExts[ext]) && !outputName.MatchString(name)
}

// kindOf tells an image from a video by its first bytes, then by its
// extension.
func kindOf(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	head := make([]byte, 512)
	n, _ := io.ReadFull(f, head)
	ct := http.DetectContentType(head[:n])
	ext := strings.ToLower(filepath.Ext(path))
	switch {
	case strings.HasPrefix(ct, "image/"):
		return "image"
	case strings.HasPrefix(ct, "video/"), videoExts[ext]:
		return "video"
	case imageExts[ext]:
		return "image" // it will fail to decode, as it should
	}
	return ""
}

// saveFile writes r to path through a temporary file, so that path never
// holds a partial file.
func saveFile(path string, r io.Reader) (int64, error) {
	return writeAtomic(path, func(f *os.File) error {
		_, err := io.Copy(f, r)
		return err
	})
}

// writeAtomic creates path by writing a temporary file beside it with
// write and renaming it; on any error the temporary file is removed.
func writeAtomic(path string, write func(*os.File) error) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.part")
	if err != nil {
		return 0, err
	}
	err = write(f)
	if err == nil {
		err = f.Chmod(0o644) // CreateTemp makes it 0600
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	var size int64
	if err == nil {
		var fi os.FileInfo
		if fi, err = os.Stat(f.Name()); err == nil {
			size = fi.Size()
			err = os.Rename(f.Name(), path)
		}
	}
	if err != nil {
		os.Remove(f.Name())
		return 0, err
	}
	return size, nil
}

// outputPath is where the output of in goes: beside it, named after the
// width, as clip.mp4 -> clip.640w.mp4.
func outputPath(in string, width int, ext string) string {
	return fmt.Sprintf("%s.%dw%s", strings.TrimSuffix(in, filepath.Ext(in)), width, ext)
}

// image scales an image down to maxWidth with Catmull-Rom and re-encodes
// it: JPEG stays JPEG, anything else becomes PNG.
func (tc *transcoder) image(ctx context.Context, in string) (*result, error) {
	f, err := os.Open(in)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cfg, format, err := image.DecodeConfig(f)
	if err != nil {
		return nil, &inputError{fmt.Errorf("not a readable image: %w", err)}
	}
	if cfg.Width*cfg.Height > maxPixels {
		return nil, &inputError{fmt.Errorf("image of %dx%d is too large", cfg.Width, cfg.Height)}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	src, _, err := image.Decode(f)
	if err != nil {
		return nil, &inputError{fmt.Errorf("decoding %s: %w", format, err)}
	}
	task.SetProgress(ctx, 30, fmt.Sprintf("decoded %s %dx%d", format, cfg.Width, cfg.Height))
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	dst, b := src, src.Bounds()
	if b.Dx() > tc.maxWidth {
		h := max(1, (b.Dy()*tc.maxWidth+b.Dx()/2)/b.Dx())
		scaled := image.NewRGBA(image.Rect(0, 0, tc.maxWidth, h))
		draw.CatmullRom.Scale(scaled, scaled.Bounds(), src, b, draw.Src, nil)
		dst = scaled
		task.SetProgress(ctx, 70, fmt.Sprintf("scaled to %dx%d", tc.maxWidth, h))
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}

	ext, encode := ".png", func(w io.Writer) error { return png.Encode(w, dst) }
	if format == "jpeg" {
		ext, encode = ".jpg", func(w io.Writer) error { return jpeg.Encode(w, dst, &jpeg.Options{Quality: 85}) }
	}
	out := outputPath(in, dst.Bounds().Dx(), ext)
	n, err := writeAtomic(out, func(f *os.File) error {
		bw := bufio.NewWriter(f)
		if err := encode(bw); err != nil {
			return err
		}
		return bw.Flush()
	})
	if err != nil {
		return nil, err
	}
	return &result{Kind: "image", Input: in, Output: out, Bytes: n, Width: dst.Bounds().Dx(), Height: dst.Bounds().Dy()}, nil
}

// probe is what ffprobe tells of a media file.
type probe struct {
	Duration float64
	Width    int
	Height   int
}

// probe runs ffprobe on path. A file that ffprobe cannot read, or that
// has no video stream, is an inputError.
func (tc *transcoder) probe(ctx context.Context, path string) (*probe, error) {
	cmd := exec.CommandContext(ctx, tc.ffprobe, "-v", "error", "-select_streams", "v:0",
		"-show_entries", "stream=width,height:format=duration", "-of", "json", path)
	var stderr tail
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if errors.Is(err, exec.ErrNotFound) {
		return nil, errNoFFmpeg
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err != nil {
		if _, ok := errors.AsType[*exec.ExitError](err); ok {
			return nil, &inputError{fmt.Errorf("not a readable video: %s", stderr.String())}
		}
		return nil, err
	}
	var p struct {
		Streams []struct{ Width, Height int }
		Format  struct{ Duration string }
	}
	if err := json.Unmarshal(out, &p); err != nil {
		return nil, fmt.Errorf("ffprobe output: %w", err)
	}
	if len(p.Streams) == 0 {
		return nil, &inputError{errors.New("no video stream")}
	}
	d, _ := strconv.ParseFloat(p.Format.Duration, 64) // "N/A" for some streams: no percentage then
	return &probe{Duration: d, Width: p.Streams[0].Width, Height: p.Streams[0].Height}, nil
}

// video transcodes with ffmpeg to H.264/AAC MP4 no wider than maxWidth,
// reporting progress as it goes. When ctx is cancelled (the task stopped
// or timed out, the service shutting down), exec.CommandContext kills
// ffmpeg and the partial output is removed.
func (tc *transcoder) video(ctx context.Context, in string) (*result, error) {
	if _, err := exec.LookPath(tc.ffmpeg); err != nil {
		return nil, errNoFFmpeg
	}
	p, err := tc.probe(ctx, in)
	if err != nil {
		return nil, err
	}
	task.SetProgress(ctx, 2, fmt.Sprintf("probed: %dx%d, %.1fs", p.Width, p.Height, p.Duration))

	width := tc.maxWidth
	if p.Width > 0 {
		width = min(width, p.Width)
	}
	width &^= 1 // H.264 wants even sizes
	out := outputPath(in, width, ".mp4")
	part := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".part")
	cmd := exec.CommandContext(ctx, tc.ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
		"-i", in,
		"-map", "0:v:0", "-map", "0:a:0?",
		"-vf", fmt.Sprintf("scale=%d:-2", width),
		"-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt", "yuv420p",
		"-c:a", "aac", "-b:a", "128k",
		"-movflags", "+faststart",
		"-progress", "pipe:1",
		"-f", "mp4", part)
	cmd.WaitDelay = 5 * time.Second // after a kill, do not wait long for the pipes
	var stderr tail
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// ffmpeg writes key=value lines, a block every half second; out_time
	// is how far it got.
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		if k != "out_time" {
			continue
		}
		done, ok := parseClock(v)
		if !ok {
			continue
		}
		msg := fmt.Sprintf("transcoding: %.1fs", done)
		pct := 50.0
		if p.Duration > 0 {
			msg += fmt.Sprintf(" of %.1fs", p.Duration)
			pct = math.Round(20+970*min(done/p.Duration, 1)) / 10 // 2% to 99%, to a tenth
		}
		task.SetProgress(ctx, pct, msg)
	}
	_, _ = io.Copy(io.Discard, stdout) // ffmpeg must never block on a full pipe
	err = cmd.Wait()
	if err != nil || ctx.Err() != nil {
		os.Remove(part)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("ffmpeg: %w: %s", err, stderr.String())
	}
	if err := os.Rename(part, out); err != nil {
		os.Remove(part)
		return nil, err
	}
	res := &result{Kind: "video", Input: in, Output: out, Duration: p.Duration}
	if fi, err := os.Stat(out); err == nil {
		res.Bytes = fi.Size()
	}
	if op, err := tc.probe(ctx, out); err == nil {
		res.Width, res.Height = op.Width, op.Height
	}
	return res, nil
}

// parseClock reads ffmpeg's HH:MM:SS.micro.
func parseClock(s string) (float64, bool) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	if len(parts) != 3 {
		return 0, false
	}
	var secs float64
	for _, p := range parts {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || v < 0 {
			return 0, false
		}
		secs = secs*60 + v
	}
	return secs, true
}

// tail keeps the last 2 KiB written to it: ffmpeg's error messages.
type tail struct {
	mu sync.Mutex
	b  []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - 2048; over > 0 {
		t.b = t.b[over:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func printTry(w io.Writer, base, dir string) {
	fmt.Fprintf(w, `offload transcode listening on %[1]s
uploads and their outputs go to %[2]s

Try:
  # make a 10 s test video, a 2 min one (long enough to stop while it runs), and a test image
  ffmpeg -f lavfi -i testsrc=duration=10:size=1280x720:rate=25 -pix_fmt yuv420p clip.mp4
  ffmpeg -f lavfi -i testsrc=duration=120:size=1280x720:rate=25 -pix_fmt yuv420p long.mp4
  ffmpeg -f lavfi -i testsrc=size=1920x1080 -frames:v 1 photo.png

  # upload asynchronously: 202 and the task id at once
  curl -si -X POST -H 'X-Fc-Invocation-Type: Async' --data-binary @clip.mp4 %[1]s/videos/clip.mp4

  # watch it: status and progress (use the id from the 202, or its Location header)
  curl -s %[1]s/tasks/<id>

  # stop one while it runs: ffmpeg is killed and the partial output removed
  curl -si -X POST -H 'X-Fc-Invocation-Type: Async' --data-binary @long.mp4 %[1]s/videos/long.mp4
  curl -s -X POST %[1]s/tasks/<id>/stop

  # an image is scaled with golang.org/x/image/draw instead of ffmpeg
  curl -si -X POST -H 'X-Fc-Invocation-Type: Async' --data-binary @photo.png %[1]s/videos/photo.png

  # a file that is not media fails at once and goes to the failure hook
  curl -si -X POST -H 'X-Fc-Invocation-Type: Async' --data-binary 'not a video' %[1]s/videos/bad.mp4

The callbacks received at /hooks/succ and /hooks/fail are logged below.
Press Ctrl-C to stop.
`, base, dir)
}
