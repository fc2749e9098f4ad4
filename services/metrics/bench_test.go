package metrics

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/emptypb"
)

// BenchmarkInterceptorUnary measures what timing one unary call adds.
func BenchmarkInterceptorUnary(b *testing.B) {
	m := NewScheduler()
	call := m.Interceptor().WrapUnary(func(context.Context, connect.AnyRequest) (connect.AnyResponse, error) {
		return nil, nil
	})
	req := connect.NewRequest(&emptypb.Empty{})
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, _ = call(ctx, req)
		}
	})
}

// BenchmarkScrape measures one scrape's gathering of a scheduler registry
// with a roster and some RPC series.
func BenchmarkScrape(b *testing.B) {
	m := NewScheduler(WithProcessMetrics())
	if err := m.ObserveRoster(func() Roster { return Roster{RunningJobs: 10} }); err != nil {
		b.Fatal(err)
	}
	for _, p := range []string{"StartJob", "StopJob", "QueryJob", "ListJobs", "StreamJobOutput", "Heartbeat"} {
		m.rpc.observe("/baton.v1.SchedulerService/"+p, nil, time.Now())
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}
