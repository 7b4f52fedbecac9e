package queue

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"os"
)

// bbolt's meta page, as far as checkFile needs it: a 16-byte page header,
// then magic, version, page size, flags (4 bytes each), the root bucket
// (16), the freelist page (8), the high-water page count (8), the txid (8)
// and an FNV-64a checksum of everything before it, in native byte order.
const (
	boltPageHeader  = 16
	boltMagic       = 0xED0CDAED
	boltVersion     = 2
	boltMetaSummed  = 56
	boltMetaBytes   = boltMetaSummed + 8
	boltMinPageSize = 1024
)

type boltMeta struct {
	pageSize uint32
	pages    uint64 // high-water mark: pages 0..pages-1 are in the file
	txid     uint64
}

func parseBoltMeta(b []byte) (boltMeta, bool) {
	if len(b) < boltMetaBytes {
		return boltMeta{}, false
	}
	e := binary.NativeEndian
	h := fnv.New64a()
	h.Write(b[:boltMetaSummed])
	if e.Uint32(b[0:]) != boltMagic || e.Uint32(b[4:]) != boltVersion || e.Uint64(b[boltMetaSummed:]) != h.Sum64() {
		return boltMeta{}, false
	}
	return boltMeta{pageSize: e.Uint32(b[8:]), pages: e.Uint64(b[40:]), txid: e.Uint64(b[48:])}, true
}

// checkFile refuses, before bbolt maps it, an existing bbolt file that is
// shorter than the pages its meta page says it holds (a truncated copy).
// bbolt would read the missing pages through its memory map, and the
// process would die of SIGBUS, which no recover catches. Anything else it
// leaves to bolt.Open: a missing or empty file (created), a file that is
// not bbolt at all (bbolt says so), an unreadable one.
func checkFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil || info.Size() == 0 {
		return nil
	}
	var best boltMeta
	found := false
	read := func(off int64) (boltMeta, bool) {
		buf := make([]byte, boltPageHeader+boltMetaBytes)
		if _, err := f.ReadAt(buf, off); err != nil {
			return boltMeta{}, false
		}
		m, ok := parseBoltMeta(buf[boltPageHeader:])
		if ok && (!found || m.txid > best.txid) {
			best, found = m, true
		}
		return m, ok
	}
	// Like bbolt: the first meta page gives the page size; if it is
	// damaged, look for the second at each possible page size.
	if m0, ok := read(0); ok {
		read(int64(m0.pageSize))
	} else {
		for ps := int64(boltMinPageSize); ps <= boltMinPageSize<<14 && ps < info.Size(); ps <<= 1 {
			if _, ok := read(ps); ok {
				break
			}
		}
	}
	if !found {
		return nil
	}
	if need := best.pages * uint64(best.pageSize); best.pageSize < boltMinPageSize || uint64(info.Size()) < need {
		return fmt.Errorf("%w: truncated bbolt file: %d bytes, its header needs %d", ErrNotOffload, info.Size(), need)
	}
	return nil
}
