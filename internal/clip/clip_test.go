package clip_test

import (
	"testing"
	"unicode/utf8"

	"github.com/offload-go/offload/internal/clip"
)

func TestPrefix(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		s    string
		n    int
		want string
	}{
		{"", 3, ""},
		{"abc", 3, "abc"},
		{"abcd", 3, "abc"},
		{"abé", 3, "ab"},   // é is 2 bytes: not cut in two
		{"ab€x", 4, "ab"},  // € is 3 bytes
		{"ab€x", 5, "ab€"}, // whole
		{"€", 0, ""},
		{"€", -1, ""},
		{"a\xffb", 2, "a\xff"}, // invalid bytes are left as they are
	} {
		if got := clip.Prefix(c.s, c.n); got != c.want {
			t.Errorf("Prefix(%q, %d) = %q; want %q", c.s, c.n, got, c.want)
		}
	}
}

func TestEllipsis(t *testing.T) {
	t.Parallel()
	if got := clip.Ellipsis("abc", 3); got != "abc" {
		t.Errorf("Ellipsis of a short string = %q", got)
	}
	if got := clip.Ellipsis("日本語", 4); got != "日..." || !utf8.ValidString(got) {
		t.Errorf("Ellipsis(日本語, 4) = %q; want %q", got, "日...")
	}
}

func FuzzPrefix(f *testing.F) {
	f.Add("héllo wörld", 4)
	f.Fuzz(func(t *testing.T, s string, n int) {
		got := clip.Prefix(s, n)
		if len(got) > max(n, 0) && len(got) != len(s) {
			t.Fatalf("Prefix(%q, %d) = %q: longer than %d", s, n, got, n)
		}
		if len(s) <= n && got != s {
			t.Fatalf("Prefix(%q, %d) = %q; want s whole", s, n, got)
		}
		if utf8.ValidString(s) && !utf8.ValidString(got) {
			t.Fatalf("Prefix(%q, %d) = %q cuts a rune", s, n, got)
		}
		if len(s) > n && n >= utf8.UTFMax && len(got) <= n-utf8.UTFMax {
			t.Fatalf("Prefix(%q, %d) = %q gives up more than a rune", s, n, got)
		}
	})
}
