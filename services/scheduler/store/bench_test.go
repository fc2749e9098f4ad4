package store_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/baton-run/baton/services/scheduler/store"
)

func BenchmarkCreateJob(b *testing.B) {
	s, _ := openStore(b)
	ctx := b.Context()
	i := 0
	for b.Loop() {
		if err := s.CreateJob(ctx, newJob(i, "w1", "alice")); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkCreateJobParallel(b *testing.B) {
	s, _ := openStore(b)
	ctx := b.Context()
	var next atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.CreateJob(ctx, newJob(int(next.Add(1)), "w1", "alice")); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkListJobs lists a page of 100 out of 10,000 jobs, from the first
// page and from one deep in the listing.
func BenchmarkListJobs(b *testing.B) {
	const n = 10_000
	s, _ := openStore(b)
	ctx := b.Context()
	for i := range n {
		mustCreateJob(b, ctx, s, newJob(i, fmt.Sprintf("w%d", i%10), fmt.Sprintf("user%d", i%3)))
	}
	// A token 50 pages in.
	deep := store.JobFilter{PageSize: 100}
	for range 50 {
		_, next, err := s.ListJobs(ctx, deep)
		if err != nil {
			b.Fatal(err)
		}
		deep.PageToken = next
	}
	for _, bc := range []struct {
		name   string
		filter store.JobFilter
	}{
		{name: "first page", filter: store.JobFilter{PageSize: 100}},
		{name: "page 51", filter: deep},
		{name: "by worker", filter: store.JobFilter{WorkerID: "w3", PageSize: 100}},
		{name: "by owner", filter: store.JobFilter{Owner: "user1", PageSize: 100}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				jobs, _, err := s.ListJobs(ctx, bc.filter)
				if err != nil {
					b.Fatal(err)
				}
				if len(jobs) != 100 {
					b.Fatalf("%d jobs, want 100", len(jobs))
				}
			}
		})
	}
}
