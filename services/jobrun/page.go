package jobrun

import (
	"slices"
	"time"
)

// Query selects the jobs of one Page.
type Query struct {
	// AfterCreated and AfterID name the job the page starts after, in
	// List's order (newest first, then by ID descending); zero values start
	// at the newest job.
	AfterCreated time.Time
	AfterID      string
	// Owner, if set, keeps only the jobs of this owner.
	Owner string
	// States, if set, keeps only jobs in one of these states.
	States []State
	// Live keeps only the jobs that are not over.
	Live bool
	// Limit is the page size; 0 means no limit.
	Limit int
}

// after reports whether st comes after q's position in List's order.
func (q *Query) after(st *Status) bool {
	if q.AfterID == "" && q.AfterCreated.IsZero() {
		return true
	}
	c, k := st.CreatedAt.UnixNano(), q.AfterCreated.UnixNano()
	return c < k || (c == k && st.ID < q.AfterID)
}

// keeps reports whether st passes q's filters.
func (q *Query) keeps(st *Status) bool {
	switch {
	case q.Live && st.State.Terminal():
		return false
	case q.Owner != "" && st.Spec.Owner != q.Owner:
		return false
	case len(q.States) > 0 && !slices.Contains(q.States, st.State):
		return false
	}
	return true
}

// Page returns the jobs q selects, in List's order, and whether more follow
// the last one. Safe for concurrent use.
func (r *Runner) Page(q Query) (jobs []Status, more bool) {
	for _, st := range r.List() {
		if !q.after(&st) || !q.keeps(&st) {
			continue
		}
		if q.Limit > 0 && len(jobs) == q.Limit {
			return jobs, true
		}
		jobs = append(jobs, st)
	}
	return jobs, false
}
