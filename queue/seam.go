package queue

import (
	"encoding/base64"
	"fmt"

	"github.com/offload-go/offload/task"
)

// Helpers that every Backend shares, so that the backends mean the same
// by a cursor and by a Finish.

// Cursor kinds.
const (
	CursorKey      = 'k' // after a 16-byte task key, in creation order
	CursorCallerID = 'c' // after a caller-chosen ID, in ID order
)

// Cursor marks where a listing page ended. Its String is the opaque
// task.Page.Next that clients hand back.
type Cursor struct {
	Kind byte
	Key  []byte
}

func (c Cursor) String() string {
	return base64.RawURLEncoding.EncodeToString(append([]byte{c.Kind}, c.Key...))
}

// ParseCursor reads a Cursor's String; "" is no cursor (nil). It wraps
// task.ErrInvalidFilter for anything else that is not a cursor.
func ParseCursor(s string) (*Cursor, error) {
	if s == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 2 || (b[0] == CursorKey && len(b) != 17) || (b[0] != CursorKey && b[0] != CursorCallerID) {
		return nil, fmt.Errorf("%w: malformed cursor", task.ErrInvalidFilter)
	}
	return &Cursor{Kind: b[0], Key: b[1:]}, nil
}

// Resolve says what finishing with o does to a task now in status cur
// (Running or Stopping): the status it ends in, the detail of its event,
// and whether the attempt stops counting (handed back unrun). A stop
// requested during the attempt wins over any outcome.
func (o Outcome) Resolve(cur task.Status) (to task.Status, detail string, uncount bool) {
	if cur == task.Stopping {
		return task.Stopped, joinDetail("stopped on request", fmt.Sprintf("attempt ended as %s", o.Status), o.Detail), false
	}
	return o.Status, o.Detail, o.Status == task.Enqueued
}

func joinDetail(parts ...string) string {
	var b []byte
	for _, p := range parts {
		if p == "" {
			continue
		}
		if len(b) > 0 {
			b = append(b, "; "...)
		}
		b = append(b, p...)
	}
	return string(b)
}
