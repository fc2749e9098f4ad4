package scheduler

import (
	"github.com/google/btree"

	batonv1 "github.com/baton-run/baton/gen/baton/v1"
)

// rosterIndex keeps the roster's members in name order: all of them, by
// state, and by label pair. Listing a page, a state or a selector's
// workers, and placing with a selector, then cost the workers found, not
// the fleet. It is guarded by registry.mu: changed under its write lock
// (joins, departures, state and label changes, all rare next to
// heartbeats), read under either mode.
type rosterIndex struct {
	all     *btree.BTreeG[*member]
	byState map[batonv1.WorkerState]*btree.BTreeG[*member]
	// byLabel holds, for each key=value pair (labelKey), the members
	// whose labels have it.
	byLabel map[string]*btree.BTreeG[*member]
}

// memberTree is a set of members in name order.
type memberTree = btree.BTreeG[*member]

func newMemberTree() *memberTree {
	// A worker's name is its id, set when its member is made.
	return btree.NewWithFreeListG(32, func(a, b *member) bool { return a.w.ID < b.w.ID }, treeNodes)
}

// treeNodes is the free list every member tree shares: with a label pair
// per worker (say host=NAME) there are as many trees as workers, and one
// list each would hold spare nodes for every one of them.
var treeNodes = btree.NewFreeListG[*member](btree.DefaultFreeListSize)

func newRosterIndex() rosterIndex {
	return rosterIndex{all: newMemberTree(), byState: make(map[batonv1.WorkerState]*memberTree), byLabel: make(map[string]*memberTree)}
}

// labelKey is the byLabel key of one label pair. Label keys cannot hold
// a NUL (see the schema's pattern).
func labelKey(k, v string) string { return k + "\x00" + v }

// add files a new member.
func (x *rosterIndex) add(m *member) {
	x.all.ReplaceOrInsert(m)
	x.file(m)
}

// remove takes m out of every tree.
func (x *rosterIndex) remove(m *member) {
	x.all.Delete(m)
	x.unfileState(m)
	x.unfileLabels(m)
}

// file brings m's place up to date with its state and labels, after a
// change of either.
func (x *rosterIndex) file(m *member) {
	if !m.filed || m.filedState != m.w.State {
		x.unfileState(m)
		t := x.byState[m.w.State]
		if t == nil {
			t = newMemberTree()
			x.byState[m.w.State] = t
		}
		t.ReplaceOrInsert(m)
		m.filedState, m.filed = m.w.State, true
	}
	if !sameLabels(m.filedLabels, m.w.Labels) {
		x.unfileLabels(m)
		for k, v := range m.w.Labels {
			key := labelKey(k, v)
			t := x.byLabel[key]
			if t == nil {
				t = newMemberTree()
				x.byLabel[key] = t
			}
			t.ReplaceOrInsert(m)
		}
		m.filedLabels = m.w.Labels
	}
}

func (x *rosterIndex) unfileState(m *member) {
	if !m.filed {
		return
	}
	if t := x.byState[m.filedState]; t != nil {
		t.Delete(m)
	}
	m.filed = false
}

func (x *rosterIndex) unfileLabels(m *member) {
	for k, v := range m.filedLabels {
		key := labelKey(k, v)
		if t := x.byLabel[key]; t != nil {
			t.Delete(m)
			if t.Len() == 0 {
				delete(x.byLabel, key)
			}
		}
	}
	m.filedLabels = nil
}

// sameLabels reports whether two label sets are equal.
func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// state returns the members in state st, in name order.
func (x *rosterIndex) state(st batonv1.WorkerState) *memberTree {
	if t := x.byState[st]; t != nil {
		return t
	}
	return emptyTree
}

// emptyTree is never written.
var emptyTree = newMemberTree()

// narrowest returns the smallest tree that holds every member whose labels
// match selector: the pair with the fewest members, or every member for an
// empty selector. A pair no member has means none matches: the empty tree.
func (x *rosterIndex) narrowest(selector map[string]string) *memberTree {
	best := x.all
	for k, v := range selector {
		t := x.byLabel[labelKey(k, v)]
		if t == nil {
			return emptyTree
		}
		if t.Len() < best.Len() {
			best = t
		}
	}
	return best
}
