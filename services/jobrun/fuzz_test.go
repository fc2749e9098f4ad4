package jobrun

import (
	"bytes"
	"testing"
)

// FuzzSeek checks the binary search of the index against a linear scan, for
// every view, on an index built from fuzzed write sizes.
func FuzzSeek(f *testing.F) {
	f.Add([]byte{3, 0x85, 1, 0, 7}, int64(4))
	f.Add([]byte{}, int64(0))
	f.Add([]byte{0xff, 0xff, 0x80, 1}, int64(300))
	f.Fuzz(func(t *testing.T, sizes []byte, off int64) {
		if off < 0 {
			off = -off
		}
		var idx bytes.Buffer
		var outN, errN uint64
		var b [indexRecordSize]byte
		for _, s := range sizes {
			rec := indexRecord{stdoutBefore: outN, stderrBefore: errN, length: uint32(s&0x7f) + 1, stream: StreamStdout}
			if s&0x80 != 0 {
				rec.stream = StreamStderr
				errN += uint64(rec.length)
			} else {
				outN += uint64(rec.length)
			}
			rec.encode(b[:])
			idx.Write(b[:])
		}
		data := bytes.NewReader(idx.Bytes())
		n := int64(len(sizes))
		for _, v := range []Stream{StreamStdout, StreamStderr, streamBoth} {
			got, err := seekRecord(data, n, v, off)
			if err != nil {
				t.Fatal(err)
			}
			want := n
			for i := range n {
				r := decodeRecord(idx.Bytes()[i*indexRecordSize:])
				if start, l := viewSpan(v, &r); start+l > off {
					want = i
					break
				}
			}
			if got != want {
				t.Fatalf("view %v offset %d: seek %d, linear %d", v, off, got, want)
			}
		}
	})
}
