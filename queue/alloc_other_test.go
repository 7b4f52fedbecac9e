//go:build !unix

package queue_test

import "os"

// allocatedBytes is not known here.
func allocatedBytes(os.FileInfo) (int64, bool) { return 0, false }
