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
	mu    sync.Mutex
	items []*member // a binary min-heap; member.heapAt is the position
}

// heapKey is what a worker is ordered by, copied from its member.
type heapKey struct {
	running, capacity int32
}

// room reports whether a worker with key k can take another job.
func (k heapKey) room() bool { return k.capacity <= 0 || k.running < k.capacity }

// less orders a before b as lessLoaded does.
func (h *loadHeap) less(a, b *member) bool {
	return lessLoaded(a, a.key.running, a.key.capacity, b, b.key.running, b.key.capacity)
}

// set files m with the given placement facts, or takes it out when it is
// not placeable. The caller holds m.hot.
func (h *loadHeap) set(m *member, placeable bool, running, capacity int32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case !placeable && m.heapAt >= 0:
		h.remove(m.heapAt)
	case !placeable:
	case m.heapAt < 0:
		m.key = heapKey{running, capacity}
		m.heapAt = len(h.items)
		h.items = append(h.items, m)
		h.up(m.heapAt)
	case m.key != (heapKey{running, capacity}):
		m.key = heapKey{running, capacity}
		if !h.up(m.heapAt) {
			h.down(m.heapAt)
		}
	}
}

// least returns the least-loaded placeable worker if it has room, and
// whether any worker is placeable at all. When the least loaded is full,
// every one is.
func (h *loadHeap) least() (m *member, any bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.items) == 0 {
		return nil, false
	}
	if top := h.items[0]; top.key.room() {
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
		if i >= len(h.items) || !h.items[i].key.room() {
			continue
		}
		out = append(out, h.items[i])
		stack = append(stack, 2*i+1, 2*i+2)
	}
	return out
}

func (h *loadHeap) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.items)
}

func (h *loadHeap) swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].heapAt, h.items[j].heapAt = i, j
}

// up moves item i towards the root while it is less than its parent and
// reports whether it moved.
func (h *loadHeap) up(i int) bool {
	moved := false
	for i > 0 {
		parent := (i - 1) / 2
		if !h.less(h.items[i], h.items[parent]) {
			break
		}
		h.swap(i, parent)
		i, moved = parent, true
	}
	return moved
}

// down moves item i towards the leaves while a child is less than it.
func (h *loadHeap) down(i int) {
	n := len(h.items)
	for {
		least := i
		if l := 2*i + 1; l < n && h.less(h.items[l], h.items[least]) {
			least = l
		}
		if r := 2*i + 2; r < n && h.less(h.items[r], h.items[least]) {
			least = r
		}
		if least == i {
			return
		}
		h.swap(i, least)
		i = least
	}
}

// remove takes item i out of the heap.
func (h *loadHeap) remove(i int) {
	last := len(h.items) - 1
	m := h.items[i]
	if i != last {
		h.swap(i, last)
	}
	h.items[last] = nil
	h.items = h.items[:last]
	m.heapAt = -1
	if i < last && !h.up(i) {
		h.down(i)
	}
}
