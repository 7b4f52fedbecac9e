// Package clip shortens text that is stored or shown (log messages, error
// details) to a bound in bytes without cutting a UTF-8 sequence in two,
// which JSON would then show as U+FFFD.
package clip

import "unicode/utf8"

// Prefix returns the longest prefix of s of at most n bytes that does not
// end inside a UTF-8 sequence. Invalid bytes are cut like any.
func Prefix(s string, n int) string {
	n = max(n, 0)
	if len(s) <= n {
		return s
	}
	for i := n; i >= 0 && i > n-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			return s[:i]
		}
	}
	return s[:n]
}

// Ellipsis returns s, or, when it is longer than n bytes, its Prefix of n
// bytes followed by "...".
func Ellipsis(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return Prefix(s, n) + "..."
}
