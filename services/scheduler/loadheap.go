package scheduler

import "sync"

// loadHeap orders the READY workers least loaded first (see lessLoaded), so
// that placing a job without a selector looks at one worker, not the
// fleet. Every change of a worker's state, capacity or running count goes
// through registry.reindexHot, which files it here; a heartbeat that
// changes nothing of these costs nothing here.
//
// Its lock is taken last: under registry.mu and member.hot, never the
// other way round. Its members' keys are copies, so reading them needs no
// member's lock.
type loadHeap struct {
	mu   sync.Mutex
	heap memberHeap // by key; member.heapAt is the place
}

func newLoadHeap() *loadHeap {
	return &loadHeap{heap: memberHeap{
		less: func(a, b *member) bool {
			return lessLoaded(a, a.key.running, a.key.capacity, b, b.key.running, b.key.capacity)
		},
		place: func(m *member) *int { return &m.heapAt },
	}}
}

// heapKey is what a worker is ordered by, copied from its member.
type heapKey struct {
	running, capacity int32
}

// room reports whether a worker with key k can take another job.
func (k heapKey) room() bool { return k.capacity <= 0 || k.running < k.capacity }

// set files m with the given placement facts, or takes it out when it is
// not placeable. The caller holds m.hot.
func (h *loadHeap) set(m *member, placeable bool, running, capacity int32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := heapKey{running, capacity}
	switch {
	case !placeable && h.heap.has(m):
		h.heap.remove(m)
	case !placeable:
	case !h.heap.has(m):
		m.key = key
		h.heap.push(m)
	case m.key != key:
		m.key = key
		h.heap.fix(m)
	}
}

// least returns the least-loaded placeable worker if it has room, and
// whether any worker is placeable at all. When the least loaded is full,
// every one is.
func (h *loadHeap) least() (m *member, any bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.heap.len() == 0 {
		return nil, false
	}
	if top := h.heap.items[0]; top.key.room() {
		return top, true
	}
	return nil, true
}

// withRoom returns the placeable workers with room. A full worker's
// subtree holds only full workers (none is less loaded than it), so the
// walk costs the workers with room, not the fleet.
func (h *loadHeap) withRoom() []*member {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*member
	stack := []int{0}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if i >= h.heap.len() || !h.heap.items[i].key.room() {
			continue
		}
		out = append(out, h.heap.items[i])
		stack = append(stack, 2*i+1, 2*i+2)
	}
	return out
}
