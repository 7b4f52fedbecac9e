package chaos_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/offload-go/offload/destination"
	"github.com/offload-go/offload/invoke"
	"github.com/offload-go/offload/queue"
	"github.com/offload-go/offload/task"
	"github.com/offload-go/offload/trigger"
)

// The child server is this test binary started with these variables set.
const (
	envChild    = "OFFLOAD_CHAOS_CHILD"    // "1" runs the server
	envAddr     = "OFFLOAD_CHAOS_ADDR"     // where to listen
	envDB       = "OFFLOAD_CHAOS_DB"       // the queue file
	envCallback = "OFFLOAD_CHAOS_CALLBACK" // the parent's recorder, http://host:port
	envWorkMs   = "OFFLOAD_CHAOS_WORK_MS"  // how long the handler works
	envFsize    = "OFFLOAD_CHAOS_FSIZE"    // RLIMIT_FSIZE in bytes; SIGUSR1 lifts it
)

var webhookSecret = []byte("chaos-test-webhook-secret")

// serveChild runs the server until SIGTERM, and exits the process.
func serveChild() {
	if err := runChild(); err != nil {
		fmt.Fprintln(os.Stderr, "chaos child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runChild() error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	if v := os.Getenv(envFsize); v != "" {
		if err := limitFileSize(v); err != nil {
			return err
		}
	}
	callback := os.Getenv(envCallback)
	workMs, _ := strconv.Atoi(os.Getenv(envWorkMs))

	db, err := queue.Open(os.Getenv(envDB), &queue.Options{Logger: log})
	if err != nil {
		return err
	}
	defer db.Close()
	sched, err := invoke.New(db, &invoke.Options{
		Logger: log, ShutdownTimeout: 10 * time.Second,
		DeliveryBackoffInitial: 50 * time.Millisecond, DeliveryBackoffMax: 500 * time.Millisecond, DeliveryTries: 100,
	})
	if err != nil {
		return err
	}
	hook, err := destination.NewWebhook(callback+"/delivered", webhookSecret, nil)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 10 * time.Second}
	work := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, ok := task.FromContext(r.Context())
		if !ok {
			_, _ = io.WriteString(w, "sync ok\n")
			return
		}
		if workMs > 0 {
			select {
			case <-time.After(time.Duration(workMs) * time.Millisecond):
			case <-r.Context().Done():
				http.Error(w, "cancelled", http.StatusServiceUnavailable)
				return
			}
		}
		// Tell the parent this attempt ran; only then succeed.
		resp, err := client.Post(callback+"/executed?id="+a.ID, "text/plain", nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		resp.Body.Close()
		_, _ = io.WriteString(w, "done\n")
	})
	tr := trigger.New(sched, &trigger.Options{TaskPath: "/tasks/"})
	mux := http.NewServeMux()
	mux.Handle("POST /work", tr.Async("work", work, &invoke.Policy{
		Concurrency: 8, BackoffInitial: 50 * time.Millisecond, BackoffMax: time.Second, MaxRetries: 50,
		OnSuccess: hook,
	}))
	mux.Handle("/tasks/", http.StripPrefix("/tasks", trigger.TaskAPI(db, nil)))

	ln, err := net.Listen("tcp", os.Getenv(envAddr))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux}
	schedDone := make(chan error, 1)
	go func() { schedDone <- sched.Run(context.Background()) }()
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	fmt.Println("ready")

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	select {
	case <-sig:
	case err := <-srvDone:
		return err
	}
	// Refuse new async requests (503 + Retry-After) while running tasks
	// finish, then stop serving, then close the queue.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := sched.Stop(ctx); err != nil {
		return fmt.Errorf("scheduler stop: %w", err)
	}
	if err := <-schedDone; err != nil {
		return err
	}
	return srv.Shutdown(ctx)
}

// limitFileSize caps the files this process may write, as a full disk
// would, and lifts the cap on SIGUSR1: "space returns".
func limitFileSize(v string) error {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return err
	}
	signal.Ignore(syscall.SIGXFSZ) // writes past the limit fail with EFBIG instead of killing us
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		return err
	}
	hard := lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: n, Max: hard}); err != nil {
		return err
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		<-usr1
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: hard, Max: hard}); err != nil {
			fmt.Fprintln(os.Stderr, "chaos child: lift file size limit:", err)
			return
		}
		fmt.Println("space returned")
	}()
	return nil
}

// readLines sends each line the child prints to the returned channel.
func readLines(r io.Reader) <-chan string {
	ch := make(chan string, 16)
	go func() {
		defer close(ch)
		s := bufio.NewScanner(r)
		for s.Scan() {
			ch <- s.Text()
		}
	}()
	return ch
}

var errNoReady = errors.New("child did not become ready")
