package scheduler

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// joinWorker registers a worker named name in r as RegisterWorker would.
func joinWorker(r *registry, name string, labels map[string]string) *member {
	m := r.getOrCreate(name)
	r.register(m, &batonv1.RegisterWorkerRequest{Name: name, Address: "127.0.0.1:1", Capacity: 4, Labels: labels}, 0, time.Now().Add(time.Minute))
	return m
}

// checkEncoding asserts that the bytes listCodec writes for res decode to
// res, and that they are what proto.Marshal makes of it.
func checkEncoding(t *testing.T, v *rosterView, res *batonv1.ListWorkersResponse) {
	t.Helper()
	got, err := listCodec{view: v}.MarshalAppend([]byte("prefix"), res)
	if err != nil {
		t.Fatal(err)
	}
	if string(got[:6]) != "prefix" {
		t.Fatalf("MarshalAppend overwrote its destination: %q", got[:6])
	}
	var back batonv1.ListWorkersResponse
	if err := proto.Unmarshal(got[6:], &back); err != nil {
		t.Fatalf("cached answer does not decode: %v", err)
	}
	if !proto.Equal(res, &back) {
		t.Fatalf("cached answer decodes to %v, want %v", names(&back), names(res))
	}
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetWorkers()) > 0 && len(want) != len(got)-6 {
		t.Errorf("cached answer is %d bytes, proto.Marshal makes %d", len(got)-6, len(want))
	}
}

func names(res *batonv1.ListWorkersResponse) []string {
	var out []string
	for _, w := range res.GetWorkers() {
		out = append(out, fmt.Sprintf("%s:%s:%d", w.GetName(), w.GetState(), w.GetRunningJobs()))
	}
	return out
}

// TestRosterView follows the view through the changes that must show at
// once, checking each answer's cached encoding.
func TestRosterView(t *testing.T) {
	t.Parallel()
	r := newRegistry(testDial)
	var v rosterView
	if res := v.list(r, listQuery{}); len(res.GetWorkers()) != 0 {
		t.Fatalf("empty roster lists %v", names(res))
	}
	for _, n := range []string{"w3", "w1", "w2"} {
		joinWorker(r, n, map[string]string{"zone": n})
	}
	// Known by name only, before its registration completes: not listed.
	r.getOrCreate("w0")

	steps := []struct {
		name   string
		change func()
		want   []string
	}{
		{"joined", func() {}, []string{"w1:WORKER_STATE_READY:0", "w2:WORKER_STATE_READY:0", "w3:WORKER_STATE_READY:0"}},
		{"drained", func() {
			if _, err := r.drain("w2"); err != nil {
				t.Fatal(err)
			}
		}, []string{"w1:WORKER_STATE_READY:0", "w2:WORKER_STATE_DRAINING:0", "w3:WORKER_STATE_READY:0"}},
		{"running count from a heartbeat", func() {
			if _, ok := r.heartbeat(r.get("w3"), 2, nil, time.Now().Add(time.Minute)); !ok {
				t.Fatal("heartbeat refused")
			}
		}, []string{"w1:WORKER_STATE_READY:0", "w2:WORKER_STATE_DRAINING:0", "w3:WORKER_STATE_READY:2"}},
		{"joined later, sorted first", func() { joinWorker(r, "w0", nil) },
			[]string{"w0:WORKER_STATE_READY:0", "w1:WORKER_STATE_READY:0", "w2:WORKER_STATE_DRAINING:0", "w3:WORKER_STATE_READY:2"}},
		{"left", func() { r.leave("w1") },
			[]string{"w0:WORKER_STATE_READY:0", "w1:WORKER_STATE_LEFT:0", "w2:WORKER_STATE_DRAINING:0", "w3:WORKER_STATE_READY:2"}},
		{"down", func() {
			if got := r.expire(time.Now().Add(time.Hour)); len(got) != 3 {
				t.Fatalf("expire marked %d workers DOWN, want 3", len(got))
			}
		}, []string{"w0:WORKER_STATE_DOWN:0", "w1:WORKER_STATE_LEFT:0", "w2:WORKER_STATE_DOWN:0", "w3:WORKER_STATE_DOWN:0"}},
	}
	for _, s := range steps {
		s.change()
		res := v.list(r, listQuery{})
		if got := names(res); !slices.Equal(got, s.want) {
			t.Fatalf("after %s: %v, want %v", s.name, got, s.want)
		}
		checkEncoding(t, &v, res)
		if again := v.list(r, listQuery{}); again != res {
			t.Errorf("after %s: an unchanged roster built a new answer", s.name)
		}
	}
}

// TestRosterViewCodecOthers checks that messages other than the view's
// current answer are marshalled as usual, including an older answer.
func TestRosterViewCodecOthers(t *testing.T) {
	t.Parallel()
	r := newRegistry(testDial)
	var v rosterView
	joinWorker(r, "w1", nil)
	old := v.list(r, listQuery{})
	joinWorker(r, "w2", nil)
	cur := v.list(r, listQuery{})
	if len(cur.GetWorkers()) != 2 || len(old.GetWorkers()) != 1 {
		t.Fatalf("answers list %v then %v", names(old), names(cur))
	}
	for _, msg := range []proto.Message{
		old,
		&batonv1.ListWorkersResponse{Workers: cur.GetWorkers()[1:], NextPageToken: "x"},
		&batonv1.HeartbeatResponse{State: batonv1.WorkerState_WORKER_STATE_READY},
	} {
		got, err := listCodec{view: &v}.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		back := msg.ProtoReflect().New().Interface()
		if err := (listCodec{view: &v}).Unmarshal(got, back); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(msg, back) {
			t.Errorf("%T round trip: %v, want %v", msg, back, msg)
		}
	}
	if _, err := (listCodec{view: &v}).Marshal("not a message"); err == nil {
		t.Error("Marshal of a string succeeded")
	}
}

// TestRosterViewChunks changes workers in different chunks of the view's
// encoding, one at a time and several at once, and joins one in the
// middle: each answer's bytes are its workers', in order.
func TestRosterViewChunks(t *testing.T) {
	t.Parallel()
	r := newRegistry(testDial)
	var v rosterView
	const n = 3*viewChunk + 17
	for i := range n {
		joinWorker(r, fmt.Sprintf("w%04d", 2*i), nil)
	}
	check := func(what string, want int) {
		t.Helper()
		res := v.list(r, listQuery{})
		if len(res.GetWorkers()) != want {
			t.Fatalf("after %s: %d workers, want %d", what, len(res.GetWorkers()), want)
		}
		checkEncoding(t, &v, res)
	}
	check("joining", n)
	for _, i := range []int{0, viewChunk + 3, 2*viewChunk - 1, n - 1} {
		if _, ok := r.heartbeat(r.get(fmt.Sprintf("w%04d", 2*i)), 3, nil, time.Now().Add(time.Minute)); !ok {
			t.Fatal("heartbeat refused")
		}
		check(fmt.Sprintf("a new running count on worker %d", i), n)
	}
	if _, err := r.drain(fmt.Sprintf("w%04d", 2*viewChunk)); err != nil {
		t.Fatal(err)
	}
	r.leave(fmt.Sprintf("w%04d", 2*(3*viewChunk)))
	check("a drain and a departure in two chunks", n)
	joinWorker(r, fmt.Sprintf("w%04d", 2*viewChunk+1), nil) // sorts into the second chunk
	check("a join in the middle", n+1)
}
