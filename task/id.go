package task

import (
	"crypto/rand"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/offload-go/offload/internal/clip"
)

// MaxIDLen is the longest caller-chosen ID.
const MaxIDLen = 128

// NewID returns a new generated task ID: a ULID for the given time, whose 80
// random bits come from crypto/rand so that an ID cannot be guessed from its
// neighbours. Generated IDs sort by creation time to the millisecond.
func NewID(now time.Time) string {
	return NewULID(now).String()
}

// NewULID is [NewID] in binary form, for backends that key records by it.
func NewULID(now time.Time) ulid.ULID {
	var id ulid.ULID
	// Neither call can fail: the time is in range and crypto/rand never errors.
	_ = id.SetTime(ulid.Timestamp(now))
	_, _ = rand.Read(id[6:])
	return id
}

// IsGenerated reports whether id has the form of a generated ID. Generated
// IDs start with a digit and caller-chosen IDs never do, so the two kinds
// cannot collide.
func IsGenerated(id string) bool {
	if len(id) != ulid.EncodedSize || id[0] < '0' || id[0] > '7' {
		return false
	}
	_, err := ulid.ParseStrict(id)
	return err == nil
}

// CheckID returns nil if id is a generated ID or a valid caller-chosen ID
// (`[A-Za-z_][A-Za-z0-9_-]{0,127}`), and an error wrapping [ErrInvalidID]
// otherwise. Caller-chosen IDs cannot contain a dot or a slash, so they can
// never name a path.
func CheckID(id string) error {
	if IsGenerated(id) {
		return nil
	}
	return CheckCallerID(id)
}

// CheckCallerID is like [CheckID] but accepts only the caller-chosen form.
func CheckCallerID(id string) error {
	if problem := callerIDProblem(id); problem != "" {
		return fmt.Errorf("%w: %q: %s", ErrInvalidID, clip.Ellipsis(id, 40), problem)
	}
	return nil
}

// callerIDProblem says what is wrong with a caller-chosen ID, or "" if nothing is.
func callerIDProblem(id string) string {
	if id == "" {
		return "empty"
	}
	if len(id) > MaxIDLen {
		return "longer than 128 bytes"
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case i > 0 && (c >= '0' && c <= '9' || c == '-'):
		default:
			return "must match [A-Za-z_][A-Za-z0-9_-]{0,127}"
		}
	}
	return ""
}

// CheckTarget returns nil if name can name a target: 1 to 128 bytes of
// letters, digits and `_ . : -`. It wraps [ErrInvalidID] otherwise.
func CheckTarget(name string) error {
	if name == "" || len(name) > MaxIDLen {
		return fmt.Errorf("%w: target name must be 1..%d bytes", ErrInvalidID, MaxIDLen)
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == ':', c == '-':
		default:
			return fmt.Errorf("%w: target %q: only letters, digits and _ . : - are allowed", ErrInvalidID, clip.Ellipsis(name, 40))
		}
	}
	return nil
}
