package queue

import (
	bolt "go.etcd.io/bbolt"

	"github.com/offload-go/offload/task"
)

// DecodeStateForTest decodes a raw record of the "state" bucket, for tests
// in package queue_test that change one on disk.
func DecodeStateForTest(rec []byte) (response *task.Response, sealedResponse []byte, err error) {
	s, err := decodeState(rec)
	if err != nil {
		return nil, nil, err
	}
	return s.Response, s.SealedResponse, nil
}

// UsedSizeForTest returns the size of the pages the database uses.
func UsedSizeForTest(q *Queue) (used int64, err error) {
	err = q.db.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil })
	return used, err
}

// ZeroFillAhead is how far ahead of the used pages the file is zero-filled.
const ZeroFillAhead = preallocAhead
