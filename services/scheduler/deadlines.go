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
// heartbeat deadline. A change that can make a deadline earlier (a
// registration, a restart, loading the roster) files it with watch.
//
// Its lock is taken last, under registry.mu and member.hot.
type deadlines struct {
	mu    sync.Mutex
	items []deadlineEntry // a binary min-heap; member.dueAt is the position
}

type deadlineEntry struct {
	m  *member
	at time.Time
}

// watch makes sure m is looked at no later than at.
func (d *deadlines) watch(m *member, at time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if i := m.dueAt; i >= 0 {
		if at.Before(d.items[i].at) {
			d.items[i].at = at
			d.up(i)
		}
		return
	}
	m.dueAt = len(d.items)
	d.items = append(d.items, deadlineEntry{m: m, at: at})
	d.up(m.dueAt)
}

// due takes out and returns the workers due at now.
func (d *deadlines) due(now time.Time) []*member {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*member
	for len(d.items) > 0 && !d.items[0].at.After(now) {
		out = append(out, d.items[0].m)
		d.remove(0)
	}
	return out
}

func (d *deadlines) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.items)
}

func (d *deadlines) swap(i, j int) {
	d.items[i], d.items[j] = d.items[j], d.items[i]
	d.items[i].m.dueAt, d.items[j].m.dueAt = i, j
}

func (d *deadlines) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if !d.items[i].at.Before(d.items[parent].at) {
			return
		}
		d.swap(i, parent)
		i = parent
	}
}

func (d *deadlines) down(i int) {
	n := len(d.items)
	for {
		least := i
		if l := 2*i + 1; l < n && d.items[l].at.Before(d.items[least].at) {
			least = l
		}
		if r := 2*i + 2; r < n && d.items[r].at.Before(d.items[least].at) {
			least = r
		}
		if least == i {
			return
		}
		d.swap(i, least)
		i = least
	}
}

func (d *deadlines) remove(i int) {
	last := len(d.items) - 1
	m := d.items[i].m
	if i != last {
		d.swap(i, last)
	}
	d.items[last] = deadlineEntry{}
	d.items = d.items[:last]
	m.dueAt = -1
	if i < last {
		d.up(i)
		d.down(i)
	}
}
