package epoch_test

import (
	"errors"
	"net/http"
	"strconv"
	"testing"

	"github.com/baton-run/baton/services/internal/epoch"
)

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		values []string
		want   int64
		err    error
	}{
		{"none", nil, 0, nil},
		{"one", []string{"1"}, 1, nil},
		{"largest", []string{"9223372036854775807"}, 9223372036854775807, nil},
		{"leading zero", []string{"007"}, 7, nil},
		{"zero", []string{"0"}, 0, epoch.ErrMalformed},
		{"empty", []string{""}, 0, epoch.ErrMalformed},
		{"sign", []string{"+7"}, 0, epoch.ErrMalformed},
		{"negative", []string{"-7"}, 0, epoch.ErrMalformed},
		{"overflow", []string{"9223372036854775808"}, 0, epoch.ErrMalformed},
		{"twice", []string{"1", "2"}, 0, epoch.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := http.Header{}
			for _, v := range tc.values {
				h.Add(epoch.Header, v)
			}
			got, err := epoch.Parse(h)
			if got != tc.want || !errors.Is(err, tc.err) {
				t.Errorf("Parse(%q) = %d, %v; want %d, %v", tc.values, got, err, tc.want, tc.err)
			}
		})
	}
}

// FuzzParse: whatever the header holds, Parse either refuses it or returns
// a positive epoch that formats back to the same digits (bar leading zeros).
func FuzzParse(f *testing.F) {
	for _, s := range []string{"1", "42", "0", "-1", "+1", "9223372036854775808", "1e3", " 1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		h := http.Header{}
		h.Set(epoch.Header, v)
		n, err := epoch.Parse(h)
		if err != nil {
			return
		}
		if n <= 0 {
			t.Fatalf("Parse(%q) = %d, accepted", v, n)
		}
		if back, err := strconv.ParseInt(v, 10, 64); err != nil || back != n || v[0] == '+' {
			t.Fatalf("Parse(%q) = %d", v, n)
		}
	})
}
