package task

import (
	"context"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/offload-go/offload/internal/clip"
)

// Progress is what a running task last reported of its progress.
type Progress struct {
	Percent   float64   `json:"percent"`
	Message   string    `json:"message,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// LogRecord is one record that a handler logged through [Logger].
type LogRecord struct {
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Message string    `json:"message"`
	Attempt int       `json:"attempt,omitempty"`
}

// MaxLogMessage bounds a kept log record's message with its attributes.
const MaxLogMessage = 1024

// Reporter receives a replayed handler's logs and progress. The scheduler
// puts one in each replay's context; it must be cheap and safe for
// concurrent use, coalescing writes to the store.
type Reporter interface {
	Log(LogRecord)
	SetProgress(percent float64, message string)
}

type reporterKey struct{}

// WithReporter returns a copy of ctx whose [Logger] and [SetProgress]
// report to r, logging also through base (slog.Default() if nil).
func WithReporter(ctx context.Context, r Reporter, base *slog.Logger) context.Context {
	if base == nil {
		base = slog.Default()
	}
	a, _ := FromContext(ctx)
	return context.WithValue(ctx, reporterKey{}, &reporting{r: r, base: base, attempt: a})
}

// reporting is what WithReporter puts in a context. Its logger is built on
// the first call to Logger: most handlers never log, and building it costs
// more allocations than the rest of a replay's context.
type reporting struct {
	r       Reporter
	base    *slog.Logger
	attempt Attempt
	once    sync.Once
	logger  *slog.Logger
}

func (rp *reporting) log() *slog.Logger {
	rp.once.Do(func() {
		a := rp.attempt
		// The task's identifiers go to the application's log only: the
		// task's own copy is shown with them already.
		next := rp.base.Handler().WithAttrs([]slog.Attr{
			slog.String("task", a.ID), slog.String("target", a.Target), slog.Int("attempt", a.Number),
		})
		rp.logger = slog.New(&reportHandler{next: next, r: rp.r, attempt: a.Number})
	})
	return rp.logger
}

// Logger returns the logger of the task running in ctx: its records are
// kept with the task (the latest ones, each truncated to MaxLogMessage),
// shown by [Query], and passed on to the application's logger. Outside a
// replay (a sync call) it returns slog.Default().
func Logger(ctx context.Context) *slog.Logger {
	if rp, ok := ctx.Value(reporterKey{}).(*reporting); ok {
		return rp.log()
	}
	return slog.Default()
}

// SetProgress records the progress of the task running in ctx (percent
// from 0 to 100, clamped, NaN counting as 0; and a message), which [Query] shows while it runs. It is
// cheap enough for a hot loop: writes are coalesced. Outside a replay it
// does nothing.
func SetProgress(ctx context.Context, percent float64, message string) {
	if rp, ok := ctx.Value(reporterKey{}).(*reporting); ok {
		if math.IsNaN(percent) { // done/total with nothing to do: JSON has no NaN
			percent = 0
		}
		rp.r.SetProgress(min(max(percent, 0), 100), message)
	}
}

// reportHandler passes records on to the application's handler and keeps
// a text copy with the task.
type reportHandler struct {
	next    slog.Handler
	r       Reporter
	attempt int
	with    string // the attributes from With, written out in the groups open then
	group   string // the open groups, "a.b."
}

// Enabled: the task keeps Debug and above, whatever the application's
// handler wants; a level of the application's own below Debug (a trace)
// goes to its handler alone, as in a sync call.
func (h *reportHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelDebug || h.next.Enabled(ctx, l)
}

func (h *reportHandler) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelDebug {
		h.r.Log(LogRecord{Time: rec.Time, Level: rec.Level.String(), Message: h.text(rec), Attempt: h.attempt})
	}
	if h.next.Enabled(ctx, rec.Level) {
		return h.next.Handle(ctx, rec)
	}
	return nil
}

// text is rec as the task keeps it: the message and attributes, at most
// MaxLogMessage bytes.
func (h *reportHandler) text(rec slog.Record) string {
	var b strings.Builder
	b.WriteString(rec.Message)
	b.WriteString(h.with)
	rec.Attrs(func(a slog.Attr) bool {
		writeAttr(&b, h.group, a)
		return b.Len() < MaxLogMessage
	})
	return clip.Prefix(b.String(), MaxLogMessage)
}

// writeAttr writes a as slog's text handler would: its value resolved
// (a LogValuer that hides a secret stays hidden), an empty attribute or
// group left out, a group's attributes each under its name.
func writeAttr(b *strings.Builder, group string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Value.Kind() == slog.KindGroup {
		if a.Key != "" {
			group += a.Key + "."
		}
		for _, ga := range a.Value.Group() {
			writeAttr(b, group, ga)
		}
		return
	}
	if a.Equal(slog.Attr{}) || b.Len() >= MaxLogMessage {
		return
	}
	b.WriteByte(' ')
	b.WriteString(group)
	b.WriteString(a.Key)
	b.WriteByte('=')
	b.WriteString(a.Value.String())
}

func (h *reportHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	var b strings.Builder
	b.WriteString(h.with)
	for _, a := range attrs {
		writeAttr(&b, h.group, a)
	}
	c.with = b.String()
	return &c
}

func (h *reportHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.next = h.next.WithGroup(name)
	c.group += name + "."
	return &c
}
