//go:build unix

package queue_test

import (
	"os"
	"syscall"
)

// allocatedBytes is how much of fi's file has blocks on disk: a sparse
// range has none.
func allocatedBytes(fi os.FileInfo) (int64, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Blocks * 512, true
}
