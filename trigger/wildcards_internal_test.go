package trigger

import (
	"slices"
	"testing"
)

func TestWildcards(t *testing.T) {
	tests := []struct {
		pattern string
		want    []string
	}{
		{"POST /videos/{name}/transcode", []string{"name"}},
		{"/files/{path...}", []string{"path"}},
		{"GET /{$}", nil},
		{"/r/{kind:daily|monthly}/{year:[0-9]{4}}", []string{"kind", "year"}},
		{"example.com/{a}/{b}", []string{"a", "b"}},
		{"/unclosed/{a", nil},
		{"/stray}/{a}", []string{"a"}},
		{"", nil},
		{"/files/{name}/*", []string{"name", "*"}},
		{"/*", []string{"*"}},
		{"GET /a*", nil},
	}
	for _, tt := range tests {
		if got := wildcards(tt.pattern); !slices.Equal(got, tt.want) {
			t.Errorf("wildcards(%q) = %q; want %q", tt.pattern, got, tt.want)
		}
	}
}
