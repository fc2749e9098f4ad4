package scheduler

import (
	"sync"
	"time"
)

// deadlines is when each worker that heartbeats (or is restarting) is next
// due to be looked at by the DOWN sweep, earliest first, so that a sweep
// costs the workers that are due, not the fleet.
//
// It is lazy: a heartbeat moves a worker's deadline later without touching
// the heap, and a worker whose entry comes due with a later deadline is
// filed again at it. Each active worker is so looked at about once per
// heartbeat deadline. A change that makes a deadline earlier (a
// registration, a restart, loading the roster) files it with watch.
//
// Its lock is taken last, under registry.mu and member.hot.
type deadlines struct {
	mu   sync.Mutex
	heap memberHeap // by member.dueTime; member.dueAt is the place
}

func newDeadlines() *deadlines {
	return &deadlines{heap: memberHeap{
		less:  func(a, b *member) bool { return a.dueTime.Before(b.dueTime) },
		place: func(m *member) *int { return &m.dueAt },
	}}
}

// watch makes sure m is looked at no later than at.
func (d *deadlines) watch(m *member, at time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case !d.heap.has(m):
		m.dueTime = at
		d.heap.push(m)
	case at.Before(m.dueTime):
		m.dueTime = at
		d.heap.fix(m)
	}
}

// due takes out and returns the workers due at now.
func (d *deadlines) due(now time.Time) []*member {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*member
	for d.heap.len() > 0 && !d.heap.items[0].dueTime.After(now) {
		m := d.heap.items[0]
		d.heap.remove(m)
		out = append(out, m)
	}
	return out
}
