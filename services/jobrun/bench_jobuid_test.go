package jobrun

import (
	"testing"
	"time"
)

// BenchmarkStartTrueJobUID is start→exit of /bin/true through two Runners
// of the same run, in turns: one running jobs under uids of their own (a
// lease, a chown of the home, setgroups/setgid/setuid in the child, the
// release after the job), one running them as the worker's uid. Like
// BenchmarkStartTrue, it waits untimed after each job until the Runner is
// done with it.
//
//	go test -run '^$' -bench StartTrueJobUID -benchtime 200x -count 5 ./services/jobrun/
func BenchmarkStartTrueJobUID(b *testing.B) {
	needRoot(b)
	plain, _ := newRunner(b, func(o *Options) { *o = uidOptions(b, UIDRange{}) })
	// Leases in the default directory, as a worker takes them; the range
	// is the tests' own.
	perJob, _ := newRunner(b, func(o *Options) {
		*o = uidOptions(b, testUIDs(900, 64))
		o.UIDLeaseDir = DefaultUIDLeaseDir
	})
	n := 0
	job := func(r *Runner) time.Duration {
		id := "b-" + itoa(int64(n))
		n++
		t0 := time.Now()
		if _, _, err := r.Start(b.Context(), id, Spec{Command: "true"}); err != nil {
			b.Fatal(err)
		}
		st, err := r.Output(b.Context(), id, OutputRequest{Follow: true}, func(Chunk) error { return nil })
		d := time.Since(t0)
		if err != nil || st.State != StateSucceeded {
			b.Fatalf("job ended %v: %v", st.State, err)
		}
		waitDone(b, r, id)
		return d
	}
	for range 5 {
		job(perJob)
		job(plain)
	}
	uids, plains := inTurns(b, func() time.Duration { return job(perJob) }, func() time.Duration { return job(plain) })
	p50, base50 := median(uids), median(plains)
	b.ReportMetric(float64(p50)/1e6, "uid-p50-ms")
	b.ReportMetric(float64(base50)/1e6, "worker-uid-p50-ms")
	b.ReportMetric(float64(p50)/float64(base50), "ratio")
}
