package task_test

import (
	"errors"
	"math/big"
	"math/bits"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/offload-go/offload/task"
)

// TestNewIDNotGuessable: 1,000 IDs made for the same millisecond share
// their time and have random parts that owe nothing to each other: all
// distinct, in no order, none a small step from another, every bit as
// often set as not, and neighbours as far apart in bits as chance puts
// them. A counter, or a monotonic ULID source (which adds a small
// increment to the previous entropy), fails every one of these.
func TestNewIDNotGuessable(t *testing.T) {
	t.Parallel()
	const n = 1000
	now := time.UnixMilli(1_790_000_000_123)
	rnd := make([]*big.Int, n)
	raw := make([][10]byte, n)
	for i := range n {
		id := task.NewID(now)
		u, err := ulid.ParseStrict(id)
		if err != nil {
			t.Fatalf("NewID = %q: %v", id, err)
		}
		if u.Time() != uint64(now.UnixMilli()) {
			t.Fatalf("NewID(%v) holds time %d", now, u.Time())
		}
		copy(raw[i][:], u[6:])
		rnd[i] = new(big.Int).SetBytes(u[6:])
	}

	// Not sequential: in a random order about half the steps go up; a
	// monotonic source goes up every time. The bound is 11 standard
	// deviations (sqrt((n+1)/12) ≈ 9.1) from the mean.
	ups := 0
	for i := 1; i < n; i++ {
		if rnd[i].Cmp(rnd[i-1]) > 0 {
			ups++
		}
	}
	if ups < 400 || ups > 600 {
		t.Errorf("%d of %d steps between consecutive IDs go up; want about half", ups, n-1)
	}

	// No two random parts within 2^40 of each other. For 1,000 uniform
	// 80-bit values the nearest pair is about 2^60 apart; a pair within
	// 2^40 has probability under 1e-6.
	sorted := slices.Clone(rnd)
	slices.SortFunc(sorted, func(a, b *big.Int) int { return a.Cmp(b) })
	minGap := new(big.Int).Lsh(big.NewInt(1), 40)
	for i := 1; i < n; i++ {
		gap := new(big.Int).Sub(sorted[i], sorted[i-1])
		if gap.Cmp(minGap) < 0 {
			t.Fatalf("two random parts differ by %v: %x and %x", gap, sorted[i-1], sorted[i])
		}
	}

	// Every one of the 80 bits is set in about half the IDs (mean 500,
	// standard deviation 15.8): none is stuck, as a counter's high bits are.
	for bit := range 80 {
		set := 0
		for _, r := range raw {
			set += int(r[bit/8] >> (7 - bit%8) & 1)
		}
		if set < 350 || set > 650 {
			t.Errorf("random bit %d is set in %d of %d IDs", bit, set, n)
		}
	}

	// Consecutive IDs differ in about 40 of the 80 bits; a counter's
	// neighbours differ in about 2.
	total := 0
	for i := 1; i < n; i++ {
		for j := range raw[i] {
			total += bits.OnesCount8(raw[i][j] ^ raw[i-1][j])
		}
	}
	if mean := float64(total) / (n - 1); mean < 38 || mean > 42 {
		t.Errorf("consecutive IDs differ in %.1f bits on average; want about 40", mean)
	}
}

// FuzzCheckID: CheckID and CheckCallerID never panic, and an ID either
// accepts can never name a path or need escaping: 1 to 128 bytes of ASCII
// letters, digits, '_' and '-', no '/', '.', '\', NUL or other control
// byte. A caller-chosen ID never has the generated form.
//
//	go test -run '^$' -fuzz FuzzCheckID ./task/
func FuzzCheckID(f *testing.F) {
	for _, id := range []string{
		task.NewID(time.UnixMilli(1_790_000_000_123)), "01arz3ndektsv4rrffq69g5fav", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
		"8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "01ARZ3NDEKTSV4RRFFQ69G5FAU", "0123456789abcdef0123456789abcdef",
		"", "a", "_", "-", "-a", "a-", "job_a", strings.Repeat("x", 128), strings.Repeat("x", 129),
		".", "..", "../../etc/passwd", "a/b", "/", `a\b`, "%2e%2e", "a.b", "a\x00", "\x00", "a\nb", "a b",
		"caf\u00e9", "\xff", "a\xc0\xaf", "a\uff0fb", "\u0430", "A\u017f", "~", "a:b", "C:", "NUL", "a\tb",
	} {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		errID, errCaller := task.CheckID(id), task.CheckCallerID(id)
		for _, err := range []error{errID, errCaller} {
			if err != nil && !errors.Is(err, task.ErrInvalidID) {
				t.Fatalf("%q: %v does not wrap ErrInvalidID", id, err)
			}
			if err != nil && len(err.Error()) > 300 { // 40 bytes of the ID, quoted, at most 4 characters each
				t.Fatalf("%q: the error repeats too much of the ID: %d bytes", id, len(err.Error()))
			}
		}
		generated := task.IsGenerated(id)
		switch {
		case generated && errID != nil:
			t.Fatalf("%q is generated but CheckID = %v", id, errID)
		case errCaller == nil && errID != nil:
			t.Fatalf("%q passes CheckCallerID but CheckID = %v", id, errID)
		case errCaller == nil && generated:
			t.Fatalf("caller-chosen %q has the generated form", id)
		case errCaller == nil && id[0] >= '0' && id[0] <= '9':
			t.Fatalf("caller-chosen %q starts with a digit", id)
		}
		if errID != nil {
			return
		}
		if len(id) == 0 || len(id) > task.MaxIDLen {
			t.Fatalf("accepted an ID of %d bytes", len(id))
		}
		for i := 0; i < len(id); i++ {
			c := id[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
				t.Fatalf("accepted %q, holding byte %#x", id, c)
			}
		}
		if filepath.Base(id) != id || filepath.Clean(id) != id || filepath.IsAbs(id) {
			t.Fatalf("accepted %q, which names a path other than a file of that name", id)
		}
		if url.PathEscape(id) != id || url.QueryEscape(id) != id {
			t.Fatalf("accepted %q, which a URL must escape", id)
		}
	})
}
