package scheduler

// memberHeap is a binary min-heap of members that keeps each member's
// place in it, so that a member whose key changed moves, and one that
// leaves goes, in time logarithmic in the heap's size. Its user guards it
// and the members' keys and places with one lock.
type memberHeap struct {
	items []*member
	less  func(a, b *member) bool
	// place is the member's field that holds its index, -1 while it is
	// not in the heap.
	place func(m *member) *int
}

func (h *memberHeap) len() int { return len(h.items) }

func (h *memberHeap) has(m *member) bool { return *h.place(m) >= 0 }

// push adds m, which is not in the heap.
func (h *memberHeap) push(m *member) {
	*h.place(m) = len(h.items)
	h.items = append(h.items, m)
	h.up(len(h.items) - 1)
}

// fix restores the order after m's key changed.
func (h *memberHeap) fix(m *member) {
	if i := *h.place(m); !h.up(i) {
		h.down(i)
	}
}

// remove takes m out of the heap.
func (h *memberHeap) remove(m *member) {
	i, last := *h.place(m), len(h.items)-1
	if i != last {
		h.swap(i, last)
	}
	h.items[last] = nil
	h.items = h.items[:last]
	*h.place(m) = -1
	if i < last && !h.up(i) {
		h.down(i)
	}
}

func (h *memberHeap) swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	*h.place(h.items[i]), *h.place(h.items[j]) = i, j
}

// up moves item i towards the root while it is less than its parent and
// reports whether it moved.
func (h *memberHeap) up(i int) bool {
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
func (h *memberHeap) down(i int) {
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
