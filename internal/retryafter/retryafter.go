// Package retryafter reads the Retry-After header, which both a replayed
// handler (invoke) and a webhook receiver (destination) may answer with.
package retryafter

import (
	"net/http"
	"strconv"
	"time"
)

// Max caps a Retry-After: far beyond any MaxAge, and short of overflowing
// a time.Duration, which would schedule the next try in the past.
const Max = 100 * 365 * 24 * time.Hour

// Parse reads h's Retry-After, delay-seconds or an HTTP date, as a wait
// from now; false if there is none or it is malformed. A date in the past
// is a wait of 0.
func Parse(h http.Header, now time.Time) (time.Duration, bool) {
	v := h.Get("Retry-After")
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseUint(v, 10, 64); err == nil {
		return time.Duration(min(secs, uint64(Max/time.Second))) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), Max), true
	}
	return 0, false
}
